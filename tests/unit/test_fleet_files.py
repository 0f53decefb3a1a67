"""Small fleet pieces: the rotating log, ports kept distinct, the run directory."""

from __future__ import annotations

import os
import socket
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
    alloc = PortAllocator("127.0.0.1", 41000, avoid={41001})
    assert [alloc.take(), alloc.take()] == [41000, 41002]


def test_run_dir_claim(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    assert rd.running_pid() is None
    rd.claim(os.getpid())
    assert rd.running_pid() == os.getpid()
    with pytest.raises(ConfigError, match="already runs"):
        rd.claim(os.getpid() + 100000)
    rd.write_state({"phase": "running"})
    assert rd.read_state() == {"phase": "running"}
    rd.release(os.getpid())
    assert rd.running_pid() is None
    # A pid file left by a dead fleet does not block a new one.
    rd.pid_file.write_text("999999999\n")
    rd.claim(os.getpid())
