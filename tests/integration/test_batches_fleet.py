"""Batches a ``gpufleet up`` fleet keeps in its run directory: through a SIGKILL of the whole
fleet and ``up`` again, driven by the ``openai`` client and ``gpufleet batches``. (A batch of
``/v1/embeddings`` on a real minilm worker is in test_minilm.py, on that module's worker.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpufleet.testing import run_server
from tests.integration._fleet import is_alive, wait_state
from tests.integration.test_batches import FINAL, _client, _jsonl, _output, _served, _wait


def _ready(state: dict[str, Any]) -> bool:
    workers = state.get("workers", [])
    return (
        len(workers) == 2
        and all(w["state"] == "ready" for w in workers)
        and state["router"]["state"] == "ready"
    )


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gpufleet", "batches", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_fleet_killed_mid_batch_finishes_it_after_up_again(tmp_path: Path) -> None:
    n = 500
    args = ["up", "--model", "synthetic", "--model-arg", "base_ms=60", "--gpus", "none"]
    args += ["--cpu-workers", "2"]
    with run_server(args, cwd=tmp_path, timeout=120) as fleet:
        state = wait_state(tmp_path, _ready, timeout=60)
        client = _client(fleet)
        uploaded = client.files.create(file=("in.jsonl", _jsonl(n)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/predict",  # type: ignore[arg-type]
            completion_window="24h",
        )
        seen = _wait(
            client,
            batch.id,
            lambda b: b.request_counts.completed >= 80,
            within=60,
            what="80 completed",
        )
        assert seen.request_counts is not None
        stored_before = seen.request_counts.completed
        children = [state["router"]["pid"], *(w["pid"] for w in state["workers"])]
        fleet.kill()
        deadline = time.monotonic() + 20
        while any(is_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in children:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert (tmp_path / ".gpufleet" / "batches" / "batches.sqlite3").exists()

    with run_server(args, cwd=tmp_path, timeout=120) as fleet:
        state = wait_state(tmp_path, lambda s: _ready(s) and s["pid"] == fleet.pid, timeout=60)
        client = _client(fleet)
        done = _wait(client, batch.id, lambda b: b.status in FINAL, within=90, what="done")
        assert done.status == "completed"
        lines = _output(client, done.output_file_id)
        assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(n)]
        assert all(line["response"]["status_code"] == 200 for line in lines)
        # The new workers ran only what had no stored result: never one stored before.
        served = _served([w["url"] for w in state["workers"]])
        assert served <= n - stored_before, (served, n, stored_before)

        # The CLI over the same endpoint.
        listed = _cli("list", "--url", fleet.url)
        assert batch.id in listed
        assert "completed" in listed
        shown = _cli("show", batch.id, "--url", fleet.url)
        assert f"{n}/{n} done" in shown
        got = _cli("download", batch.id, "--url", fleet.url, "-o", str(tmp_path / "dl"))
        assert f"{batch.id}_output.jsonl" in got
        downloaded = (tmp_path / "dl" / f"{batch.id}_output.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in downloaded] == lines
