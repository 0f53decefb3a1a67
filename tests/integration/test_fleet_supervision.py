"""`gpufleet up` with synthetic CPU workers: spread, restarts, crash loops, graceful stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpufleet.testing import run_server
from tests.integration._fleet import is_alive, post, read_state, wait_state

FAST = ["--model", "synthetic", "--model-arg", "base_ms=5", "--model-arg", "per_item_ms=1"]


def _ready_pids(state: dict[str, Any]) -> dict[str, int]:
    return {w["name"]: w["pid"] for w in state.get("workers", []) if w["state"] == "ready"}


def test_requests_reach_all_three_workers(tmp_path: Path) -> None:
    with run_server(["up", *FAST, "--cpu-workers", "3"], cwd=tmp_path) as fleet:
        state = wait_state(tmp_path, lambda s: len(_ready_pids(s)) == 3)
        with ThreadPoolExecutor(12) as pool:
            answers = list(
                pool.map(lambda i: post(f"{fleet.url}/predict", {"input": i}), range(90))
            )
        assert {status for status, _ in answers} == {200}
        served_by = {body["output"]["pid"] for _, body in answers}
        assert served_by == set(_ready_pids(state).values())
        assert all(body["output"]["cuda_visible_devices"] == "" for _, body in answers)
        assert "running 3 CPU worker(s)" in fleet.log()
        logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
        ports = sorted(f"worker-cpu-{w['port']}.log" for w in state["workers"])
        assert [name for name in logs if name.startswith("worker-")] == ports
        status = subprocess.run(
            [sys.executable, "-m", "gpufleet", "status"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert fleet.url in status
        assert status.count(" ready ") >= 3, status


class Load:
    """Client threads sending requests through the endpoint until stopped; counts failures."""

    def __init__(self, url: str, threads: int = 4, body: Any = None) -> None:
        self.url = url
        self.body = body if body is not None else {"input": "x"}
        self.ok = 0
        self.failures: list[str] = []
        self.pids: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = post(f"{self.url}/predict", self.body, timeout=30)
            except OSError as exc:
                status, body = -1, repr(exc)
            with self._lock:
                if status == 200:
                    self.ok += 1
                    self.pids.append((time.monotonic(), body["output"]["pid"]))
                else:
                    self.failures.append(f"{status}: {body}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def test_sigkill_worker_under_load_is_back_without_failed_requests(tmp_path: Path) -> None:
    args = ["up", *FAST, "--cpu-workers", "3", "--restart-backoff", "0.2"]
    with run_server(args, cwd=tmp_path) as fleet:
        before = _ready_pids(wait_state(tmp_path, lambda s: len(_ready_pids(s)) == 3))
        name, victim = sorted(before.items())[0]
        with Load(fleet.url) as load:
            deadline = time.monotonic() + 20
            while load.ok < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            state = wait_state(
                tmp_path,
                lambda s: _ready_pids(s).get(name) not in (None, victim),
                timeout=10,
            )
            back_after = time.monotonic() - killed_at
            new_pid = _ready_pids(state)[name]
            while not any(pid == new_pid for _, pid in load.pids):
                assert time.monotonic() - killed_at < 10, "restarted worker serves nothing"
                time.sleep(0.05)
        assert back_after < 10
        assert load.failures == [], load.failures[:5]
        assert not is_alive(victim)
        worker = next(w for w in state["workers"] if w["name"] == name)
        assert worker["restarts"] == 1
        assert "SIGKILL" in worker["last_error"]


def test_a_pool_that_never_starts_stops_up_with_its_reason(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "fleet:\n"
        "  pools:\n"
        "    main: {model: synthetic, cpu_workers: 1, model_args: {base_ms: 5}}\n"
        "    broken: {model: synthetic, cpu_workers: 1, prefix: /broken,\n"
        "             model_args: {crash_on_start: 'true'}}\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gpufleet", "up", "--config", str(config), "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 30
    assert "exit 3 while starting" in done.stdout
    assert "gpufleet: not started: no worker of pool broken became ready" in done.stdout
    assert "ready at" not in done.stdout
    assert "processes still alive: none" in done.stdout


def test_a_worker_that_keeps_crashing_is_shown_as_crash_looping(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "fleet:\n"
        "  restart_backoff_s: 0.2\n"
        "  restart_backoff_max_s: 1\n"
        "  pools:\n"
        "    main: {model: synthetic, cpu_workers: 2, model_args: {base_ms: 5}}\n"
        "    flaky: {model: synthetic, cpu_workers: 1, prefix: /flaky,\n"
        "            model_args: {crash_after: 1}}\n"
    )
    with run_server(["up", "--config", str(config)], cwd=tmp_path) as fleet:
        deadline = time.monotonic() + 60
        state: dict[str, Any] = {}
        while not any(w["state"] == "crash-looping" for w in state.get("workers", [])):
            assert time.monotonic() < deadline, state
            post(f"{fleet.url}/flaky/predict", {"input": "x"}, timeout=10)  # its 2nd crashes it
            time.sleep(0.1)
            state = read_state(tmp_path)
        flaky = next(w for w in state["workers"] if w["pool"] == "flaky")
        assert flaky["failures"] >= 3
        assert flaky["last_exit"] not in (None, 0)
        for i in range(10):
            status, body = post(f"{fleet.url}/predict", {"input": i})
            assert status == 200, body
        assert "crash-looping" in fleet.log()
        status_text = subprocess.run(
            [sys.executable, "-m", "gpufleet", "status"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        # By the time `status` runs the flaky worker may be between crashes in any state
        # (crash-looping, starting, or ready again until its next request); what it must
        # show in every one is the crashes: the restart count and the last failure.
        flaky_row = next(
            line.split() for line in status_text.splitlines() if line.startswith("flaky")
        )
        assert int(flaky_row[5]) >= 3, status_text
        assert "last failure: exit 3" in status_text, status_text


def _wait_in_flight(url: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/stats", timeout=5) as resp:
            if json.loads(resp.read())["totals"]["in_flight"] >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"{count} requests never in flight at {url}")


def test_sigterm_under_load_finishes_in_flight_and_leaves_nothing(tmp_path: Path) -> None:
    args = ["up", "--model", "synthetic", "--model-arg", "base_ms=1500", "--cpu-workers", "2"]
    with run_server(args, cwd=tmp_path) as fleet:
        state = wait_state(
            tmp_path, lambda s: len(_ready_pids(s)) == 2 and s["router"]["pid"] is not None
        )
        pids = [*_ready_pids(state).values(), state["router"]["pid"]]
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, f"{fleet.url}/predict", {"input": i}) for i in range(6)]
            _wait_in_flight(fleet.url, 6)
            fleet.signal(signal.SIGTERM)
            answers = [f.result(timeout=60) for f in futures]
        assert [status for status, _ in answers] == [200] * 6, answers
        assert fleet.proc.wait(timeout=60) == 0
        assert [pid for pid in pids if is_alive(pid)] == []
        assert read_state(tmp_path)["phase"] == "stopped"
        assert "processes still alive: none" in fleet.log()
