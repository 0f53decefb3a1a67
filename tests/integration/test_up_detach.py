"""`gpufleet up --detach`, `status`, `down`, and `config show`, as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.integration._fleet import is_alive, post


def gpufleet(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``gpufleet ARGS`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


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
