"""`gpufleet up --stall-timeout`: a worker whose device wedges is restarted, and says why.

Issue 12: a worker whose ``predict`` never returns kept answering ``/health`` 200, so the
fleet never noticed it. Now its ``/health`` turns 503 ``stalled`` after the stall timeout,
and the fleet counts that as a failed liveness probe.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpufleet.testing import run_server
from tests.integration._fleet import get_json, is_alive, post, wait_state

CONFIG = """\
fleet:
  restart_backoff_s: 0.2
  liveness_interval_s: 0.5
  liveness_failures: 2
  kill_timeout_s: 1
"""
HANGS = ["--model-arg", "hang_on=HANG", "--model-arg", "hang_s=60", "--model-arg", "base_ms=5"]


def _worker(state: dict[str, Any]) -> dict[str, Any]:
    worker: dict[str, Any] = state["workers"][0]
    return worker


def _served(url: str, timeout: float = 15.0) -> int:
    """POST through the fleet until it answers 200; the pid that served it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = post(url, {"input": "x"}, timeout=10)
        except OSError as exc:
            status, body = -1, repr(exc)
        if status == 200:
            return int(body["output"]["pid"])
        assert time.monotonic() < deadline, f"{url}: {status} {body}"
        time.sleep(0.1)


def test_up_restarts_a_worker_whose_device_is_stalled(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(CONFIG)
    args = ["up", "--model", "synthetic", *HANGS, "--cpu-workers", "1", "--stall-timeout", "2"]
    with run_server([*args, "--config", "fleet.yaml"], cwd=tmp_path) as fleet:
        state = wait_state(tmp_path, lambda s: _worker(s)["state"] == "ready")
        worker = _worker(state)
        first = int(worker["pid"])
        assert _served(f"{fleet.url}/predict") == first
        assert get_json(worker["url"] + "/stats")["stall_timeout_s"] == 2.0  # the flag arrived

        # Straight to the worker: a router could send the request again after the restart.
        with ThreadPoolExecutor(1) as pool:
            hung = pool.submit(post, worker["url"] + "/predict", {"input": "HANG"}, 30)
            began = time.monotonic()
            state = wait_state(
                tmp_path,
                lambda s: _worker(s)["restarts"] == 1 and _worker(s)["state"] == "ready",
            )
            took = time.monotonic() - began
            assert hung.exception(timeout=10) is not None  # its worker was killed
        again = _worker(state)
        # (2 s or a little more: the probe that sees it comes every 0.5 s on a busy machine)
        assert re.match(
            r"stalled: device thread has not finished a batch in [23]\.\ds", again["last_error"]
        ), again
        assert again["pid"] != first
        assert not is_alive(first)
        # 2 s to turn stalled, 2 probes 0.5 s apart, SIGTERM then SIGKILL 1 s later, 0.2 s
        # back-off, a fresh start: well under the 60 s the hang would last.
        assert took < 15, took
        assert _served(f"{fleet.url}/predict") == again["pid"]
        lines = [line for line in fleet.log().splitlines() if "stalled: device thread" in line]
        # When it decides, then when the restart is scheduled (after the kill).
        assert len(lines) == 2, lines
        assert f"restarting {again['name']} (pid {first}): stalled: device thread" in lines[0]
        assert f"{again['name']} failed: stalled: device thread" in lines[1]
