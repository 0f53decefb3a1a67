"""Bulk jobs against endpoints that never answer end in bounded time and say why (issue 14)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from gpufleet import Client
from gpufleet.testing import free_port


def _generate(tmp_path: Path, *args: str) -> tuple[int, str, float]:
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gpufleet", "generate", "-f", "p.txt", "--progress", "plain", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def test_generate_against_nothing_gives_up_after_max_attempts(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, err, seconds = _generate(tmp_path, "-e", url, "--max-attempts", "2")
    assert code == 1
    assert seconds < 10
    why = (
        f"gave up after 2 attempt(s): GET {url}/health: connection refused (nothing listens there)"
    )
    assert f"gpufleet generate: item 000001 failed: {why}" in err.splitlines()
    assert "ssl:default" not in err
    assert "Connect call failed" not in err


def test_generate_against_a_server_that_never_answers_ends_in_its_bound(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, err, seconds = _generate(tmp_path, "-e", url, "--unavailable-timeout", "2")
    assert code == 1
    assert seconds < 12
    assert f"GET {url}/stats: no answer within 2s; items wait until it answers" in err
    assert "no endpoint reachable for 2s (--unavailable-timeout)" in err


def test_client_run_sync_against_nothing_returns_in_bounded_time() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    (result,) = Client(url, max_attempts=2, cooldown_base_s=0.1).run_sync(["x"])
    assert time.monotonic() - started < 5
    assert result.status == "failed"
    assert result.error == (
        f"gave up after 2 attempt(s): GET {url}/health: connection refused (nothing listens there)"
    )
    assert result.tried == [url, url]
