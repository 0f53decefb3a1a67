"""One fleet of two pools, taken through what supervision must survive, in one run (CI time).

Pool prefixes reach their own pool; a SIGKILLed router comes back on the same port; a
worker that stops answering its liveness probe (SIGSTOP: alive, silent) is killed and
restarted, while a worker whose device is merely busy (a hung ``predict``) is left alone;
and a second SIGTERM ends ``up`` at once although a request is still in flight.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpufleet.testing import run_server
from tests.integration._fleet import is_alive, post, read_state, wait_state

CONFIG = """\
fleet:
  restart_backoff_s: 0.2
  restart_backoff_max_s: 1
  liveness_interval_s: 0.5
  liveness_timeout_s: 2
  liveness_failures: 2
  kill_timeout_s: 1
  pools:
    fast: {model: synthetic, cpu_workers: 1, prefix: /fast, model_args: {base_ms: 5}}
    main: {model: synthetic, cpu_workers: 1, model_args: {base_ms: 5, hang_on: hang, hang_s: 60}}
"""


def _pid(state: dict[str, Any], pool: str) -> int:
    worker = next(w for w in state["workers"] if w["pool"] == pool)
    return int(worker["pid"]) if worker["state"] == "ready" else 0


def _all_ready(state: dict[str, Any]) -> bool:
    return state["router"]["state"] == "ready" and all(
        w["state"] == "ready" for w in state["workers"]
    )


def _served_by(url: str, timeout: float = 15.0) -> int:
    """POST until the fleet answers 200 (a restarted part is re-admitted after a probe)."""
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


def _in_flight(url: str) -> int:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["totals"]["in_flight"])


def test_pools_router_restart_liveness_and_forced_stop(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(CONFIG)
    frozen: list[int] = []
    try:
        _run(tmp_path, frozen)
    finally:
        # A stopped process ignores the fleet's SIGTERM: if the test failed before the
        # supervisor killed it, do it here rather than leave it behind.
        for pid in frozen:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _run(tmp_path: Path, frozen: list[int]) -> None:
    with run_server(["up", "--config", "fleet.yaml"], cwd=tmp_path) as fleet:
        state = wait_state(tmp_path, _all_ready)
        fast, main = _pid(state, "fast"), _pid(state, "main")

        # Each prefix reaches its own pool, and only it.
        with ThreadPoolExecutor(8) as pool:
            to_fast = list(pool.map(lambda _: _served_by(f"{fleet.url}/fast/predict"), range(12)))
            to_main = list(pool.map(lambda _: _served_by(f"{fleet.url}/predict"), range(12)))
        assert set(to_fast) == {fast}
        assert set(to_main) == {main}

        # A SIGKILLed router is restarted on the same port and serves again.
        router = state["router"]["pid"]
        os.kill(router, signal.SIGKILL)
        state = wait_state(
            tmp_path, lambda s: s["router"]["pid"] not in (None, router) and _all_ready(s)
        )
        assert state["router"]["port"] == fleet.port
        assert state["router"]["restarts"] == 1
        assert _served_by(f"{fleet.url}/fast/predict") == fast

        # A request that hangs on main's device: the worker is busy, not dead.
        with ThreadPoolExecutor(1) as pool:
            hung = pool.submit(post, f"{fleet.url}/predict", {"input": "hang"}, 120)
            deadline = time.monotonic() + 20
            while _in_flight(fleet.url) < 1:
                assert time.monotonic() < deadline, "the hanging request never arrived"
                time.sleep(0.05)

            # A worker that no longer answers at all (stopped) fails its liveness probes.
            frozen.append(fast)
            os.kill(fast, signal.SIGSTOP)
            state = wait_state(tmp_path, lambda s: _pid(s, "fast") not in (0, fast))
            restarted = next(w for w in state["workers"] if w["pool"] == "fast")
            assert "liveness" in restarted["last_error"], restarted
            assert restarted["restarts"] == 1
            assert not is_alive(fast)
            assert _served_by(f"{fleet.url}/fast/predict") == _pid(state, "fast")
            busy = next(w for w in state["workers"] if w["pool"] == "main")
            assert (busy["pid"], busy["restarts"]) == (main, 0)
            assert _in_flight(fleet.url) >= 1

            # First SIGTERM: the router waits for the hung request (drain 30 s).
            # The second one kills everything now.
            pids = [state["router"]["pid"], *(w["pid"] for w in state["workers"])]
            fleet.signal(signal.SIGTERM)
            wait_state(tmp_path, lambda s: s["phase"] == "stopping")
            time.sleep(0.5)
            assert fleet.proc.poll() is None, "the first SIGTERM did not wait for the request"
            forced_at = time.monotonic()
            fleet.signal(signal.SIGTERM)
            assert fleet.proc.wait(timeout=20) == 1
            took = time.monotonic() - forced_at
            assert hung.exception(timeout=20) is not None  # its connection was cut
        assert took < 10, f"a forced stop took {took:.1f}s"
        assert [pid for pid in pids if is_alive(pid)] == []
        assert read_state(tmp_path)["phase"] == "stopped"
        assert "forced stop" in fleet.log()
