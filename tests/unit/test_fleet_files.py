"""Small fleet pieces: the rotating log, ports kept distinct, the run directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.errors import ConfigError
from gpufleet.fleet.logfile import RotatingLog
from gpufleet.fleet.ports import PortAllocator
from gpufleet.fleet.rundir import RunDir


def test_rotating_log_keeps_backups(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "w.log", max_bytes=10, backups=2)
    for chunk in (b"aaaaaaaa", b"bbbbbbbb", b"cccccccc", b"dddddddd"):
        log.write(chunk)
    log.close()
    assert (tmp_path / "w.log").read_bytes() == b"dddddddd"
    assert (tmp_path / "w.log.1").read_bytes() == b"cccccccc"
    assert (tmp_path / "w.log.2").read_bytes() == b"bbbbbbbb"
    assert not (tmp_path / "w.log.3").exists()
    log.write(b"after close is dropped")


def test_free_ports_are_distinct() -> None:
    alloc = PortAllocator("127.0.0.1", 0)
    ports = [alloc.take() for _ in range(20)]
    assert len(set(ports)) == 20


def test_base_port_counts_up_and_names_a_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {busy}"):
            PortAllocator("127.0.0.1", busy).take()
    base = _free_pair_below_ephemeral()
    alloc = PortAllocator("127.0.0.1", base, avoid={base + 1})
    assert [alloc.take(), alloc.take()] == [base, base + 2]


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_pair_below_ephemeral() -> int:
    """A port ``p`` with ``p`` and ``p + 2`` free, below Linux's ephemeral range (32768+),
    where other tests' outgoing connections would take ports at random."""
    return next(p for p in range(20000, 32000, 3) if _is_free(p) and _is_free(p + 2))


def test_run_dir_claim(tmp_path: Path) -> None:
    # A pid counts as a fleet only when its command line names gpufleet (as `up`'s does).
    fleet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "gpufleet"])
    # Not a substring match: a Python whose path holds gpufleet is still not a fleet.
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--dir", "/x/gpufleet/.venv"]
    )
    try:
        rd = RunDir(tmp_path / "run")
        assert rd.running_pid() is None
        rd.claim(fleet.pid)
        assert rd.running_pid() == fleet.pid
        with pytest.raises(ConfigError, match="already runs"):
            rd.claim(fleet.pid + 100000)
        with pytest.raises(ConfigError, match=f"pid {fleet.pid}"):
            rd.check_free()
        rd.write_state({"phase": "running"})
        assert rd.read_state() == {"phase": "running"}
        rd.release(fleet.pid)
        assert rd.running_pid() is None
        rd.check_free()
        # A pid file whose pid now belongs to another program (reused) is no fleet.
        rd.pid_file.write_text(f"{stranger.pid}\n")
        assert rd.running_pid() is None
        rd.check_free()
    finally:
        for proc in (fleet, stranger):
            proc.kill()
            proc.wait(timeout=10)
    # A pid file left by a dead fleet does not block a new one.
    rd.pid_file.write_text("999999999\n")
    rd.claim(os.getpid())
