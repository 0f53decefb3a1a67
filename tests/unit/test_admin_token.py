"""The fleet keeps its router's admin token in the run directory, readable by its owner only,
never written through a link, and gone when ``up`` ends."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gpufleet.cli.operate import _fleet_admin_token
from gpufleet.errors import ConfigError
from gpufleet.fleet.up import (
    ADMIN_TOKEN_DIR,
    ADMIN_TOKEN_FILE,
    remove_admin_token,
    write_admin_token,
)


def test_token_file_is_owner_only_and_read_back(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ADMIN_TOKEN_DIR).mkdir(parents=True, mode=0o755)
    (run / ADMIN_TOKEN_FILE).write_text("old\n")
    (run / ADMIN_TOKEN_FILE).chmod(0o644)
    write_admin_token(run, "s3cret")
    assert stat.S_IMODE((run / ADMIN_TOKEN_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((run / ADMIN_TOKEN_DIR).stat().st_mode) == 0o700
    assert _fleet_admin_token(str(run)) == "s3cret"
    remove_admin_token(run)
    assert not (run / ADMIN_TOKEN_FILE).exists()
    assert _fleet_admin_token(str(run)) is None
    remove_admin_token(run)  # twice is fine


def test_a_planted_link_is_replaced_never_written_through(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ADMIN_TOKEN_DIR).mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    victim.chmod(0o644)
    (run / ADMIN_TOKEN_FILE).symlink_to(victim)
    assert _fleet_admin_token(str(run)) is None  # not read through the link either
    write_admin_token(run, "s3cret")
    assert victim.read_text() == "keep\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not (run / ADMIN_TOKEN_FILE).is_symlink()
    assert _fleet_admin_token(str(run)) == "s3cret"


def test_a_linked_private_directory_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / ADMIN_TOKEN_DIR).symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="not a link"):
        write_admin_token(run, "s3cret")
    assert list(elsewhere.iterdir()) == []


def test_no_run_dir_means_no_token(tmp_path: Path) -> None:
    assert _fleet_admin_token(str(tmp_path / "missing")) is None
