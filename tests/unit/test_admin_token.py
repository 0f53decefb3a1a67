"""The fleet keeps its router's admin token in the run directory, readable by its owner only."""

from __future__ import annotations

import stat
from pathlib import Path

from gpufleet.cli.operate import _fleet_admin_token
from gpufleet.fleet.up import ADMIN_TOKEN_FILE, write_admin_token


def test_token_file_is_owner_only_and_read_back(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run).mkdir()
    (run / ADMIN_TOKEN_FILE).write_text("old\n")
    (run / ADMIN_TOKEN_FILE).chmod(0o644)
    write_admin_token(run, "s3cret")
    mode = stat.S_IMODE((run / ADMIN_TOKEN_FILE).stat().st_mode)
    assert mode == 0o600
    assert _fleet_admin_token(str(run)) == "s3cret"


def test_no_run_dir_means_no_token(tmp_path: Path) -> None:
    assert _fleet_admin_token(str(tmp_path / "missing")) is None
