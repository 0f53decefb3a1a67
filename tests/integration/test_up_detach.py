"""`gpufleet up --detach`, `status`, `down`, and `config show`, as a user types them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.integration._fleet import gpufleet, is_alive, post


def test_detach_status_down(tmp_path: Path) -> None:
    args = ["up", "--detach", "--model", "synthetic", "--cpu-workers", "2", "--port", "0"]
    started = gpufleet(tmp_path, *args)
    assert "running in the background" in started.stdout
    try:
        state = json.loads(gpufleet(tmp_path, "status", "--json").stdout)
        assert state["alive"]
        assert state["phase"] == "running"
        status, body = post(f"{state['endpoint']}/predict", {"input": "hi"})
        assert status == 200, body
        state = json.loads(gpufleet(tmp_path, "status", "--json").stdout)
        assert sum(w["served"] or 0 for w in state["workers"]) >= 1
        assert {w["state"] for w in state["workers"]} == {"ready"}
        text = gpufleet(tmp_path, "status").stdout
        assert state["endpoint"] in text
        pids = [w["pid"] for w in state["workers"]] + [state["router"]["pid"], state["pid"]]
        # A second fleet from the same directory is refused while the first one runs.
        again = gpufleet(tmp_path, "up", "--model", "synthetic", "--port", "0", check=False)
        assert again.returncode == 2
        assert "already runs" in again.stderr
    finally:
        stopped = gpufleet(tmp_path, "down", check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert [pid for pid in pids if is_alive(pid)] == []
    assert gpufleet(tmp_path, "status", check=False).returncode == 3
    assert "no fleet runs" in gpufleet(tmp_path, "down").stdout


def _pids_in(cwd: Path) -> list[int]:
    """Processes whose working directory is ``cwd`` (the fleets these tests started)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == cwd.resolve():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_detach_from_yaml_runs_once_and_a_second_detach_keeps_its_state(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        "fleet:\n  detach: true\n  model: synthetic\n  cpu_workers: 1\n  port: 0\n"
        "  startup_timeout_s: 20\n"
    )
    try:
        started = gpufleet(tmp_path, "up", "--config", "fleet.yaml", check=False)
        assert started.returncode == 0, started.stderr
        assert "running in the background" in started.stdout
        state_file = tmp_path / ".gpufleet" / "state.json"
        state = json.loads(state_file.read_text())
        assert state["phase"] == "running"
        # One supervisor (not a chain of them forking each other), one worker, one router.
        assert sorted(_pids_in(tmp_path)) == sorted(
            [state["pid"], state["router"]["pid"], *(w["pid"] for w in state["workers"])]
        )
        again = gpufleet(tmp_path, "up", "--detach", "--config", "fleet.yaml", check=False)
        assert again.returncode == 2, again.stdout
        assert f"a fleet (pid {state['pid']}) already runs" in again.stderr
        assert json.loads(state_file.read_text())["pid"] == state["pid"]
        shown = json.loads(gpufleet(tmp_path, "status", "--json").stdout)
        assert shown["alive"]
        assert shown["pid"] == state["pid"]
        status, body = post(f"{state['endpoint']}/predict", {"input": "hi"})
        assert status == 200, body
    finally:
        stopped = gpufleet(tmp_path, "down", check=False)
        for pid in _pids_in(tmp_path):  # what a broken fix would leave behind
            os.kill(pid, signal.SIGKILL)
    assert "stopped" in stopped.stdout, stopped.stderr


def test_down_and_status_do_not_trust_a_pid_file_of_another_program(tmp_path: Path) -> None:
    assert gpufleet(tmp_path, "status", check=False).returncode == 3
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        run_dir = tmp_path / ".gpufleet"
        run_dir.mkdir()
        (run_dir / "fleet.pid").write_text(f"{stranger.pid}\n")
        (run_dir / "state.json").write_text(
            json.dumps({"pid": stranger.pid, "phase": "running", "endpoint": "http://127.0.0.1:9"})
        )
        down = gpufleet(tmp_path, "down", "--timeout", "1", check=False)
        assert down.returncode == 0, down.stderr
        assert "no fleet runs" in down.stdout
        assert stranger.poll() is None, "down signalled a process that is not gpufleet"
        status = gpufleet(tmp_path, "status", "--json", check=False)
        assert status.returncode == 3
        assert json.loads(status.stdout)["alive"] is False
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


def test_config_show_prints_the_effective_settings(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        "fleet:\n  policy: round-robin\n  pools:\n    fast: {model: synthetic, prefix: /fast}\n"
        "worker:\n  max_wait_ms: 7\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "gpufleet", "config", "show", "--config", "fleet.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "GPUFLEET_CPU_WORKERS": "5"},
    ).stdout
    shown = yaml.safe_load(out)
    assert shown["fleet"]["policy"] == "round-robin"
    assert shown["fleet"]["cpu_workers"] == 5
    assert shown["fleet"]["pools"]["fast"]["prefix"] == "/fast"
    assert shown["worker"]["max_wait_ms"] == 7
    assert "router" in shown
