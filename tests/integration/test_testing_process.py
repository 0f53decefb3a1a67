"""``run_server`` and ``run_module`` leave no temporary directory behind (issue 15)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from gpufleet.testing import run_worker
from gpufleet.testing.upstreams import run_upstream


@pytest.fixture
def tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where ``tempfile.mkdtemp`` makes directories during the test (nobody else's)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_server_s_directory_is_removed_and_its_log_kept(tmp_root: Path) -> None:
    with run_worker("synthetic") as worker:
        assert worker.workdir.parent == tmp_root
        assert (worker.workdir / "process.log").is_file()
    assert list(tmp_root.iterdir()) == []
    assert "synthetic" in worker.log()  # read before the directory went


def test_a_server_that_does_not_start_leaves_no_directory(tmp_root: Path) -> None:
    with pytest.raises(RuntimeError, match="before binding a port"), run_worker("minilmm"):
        pass  # pragma: no cover - it never starts
    assert list(tmp_root.iterdir()) == []


def test_a_test_server_s_directory_is_removed(tmp_root: Path) -> None:
    with run_upstream() as upstream:
        assert upstream.workdir.parent == tmp_root
    assert list(tmp_root.iterdir()) == []
