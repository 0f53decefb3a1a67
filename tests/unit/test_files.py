"""The one atomic write: whole files, never through a link, no temporary left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gpufleet._files import write_atomic


def test_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "port"
    assert write_atomic(target, "8000\n") == target
    write_atomic(target, b"8001\n")
    assert target.read_text() == "8001\n"
    assert [p.name for p in tmp_path.iterdir()] == ["port"]


def test_mode_is_set_exactly_and_defaults_to_the_umask(tmp_path: Path) -> None:
    write_atomic(tmp_path / "run.sh", "#!/bin/sh\n", mode=0o755)
    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o755
    write_atomic(tmp_path / "secret", "x", mode=0o600)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "plain", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o640


def test_a_link_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "state.json").symlink_to(outside)
    write_atomic(folder / "state.json", "{}")
    assert not (folder / "state.json").is_symlink()
    assert (folder / "state.json").read_text() == "{}"
    assert outside.read_text() == "keep"


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "dir", "x")  # a directory is in the way
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "state.json"]


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "file", "x")
