"""`make run` (`gpufleet up`, no --model): minilm on every device behind one endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpufleet.testing import run_server
from tests.integration._fleet import is_alive, wait_state


def _embed(url: str, text: str) -> tuple[int, str, list[float]]:
    req = urllib.request.Request(
        f"{url}/v1/embeddings",
        data=json.dumps({"input": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        upstream = resp.headers.get("X-Gpufleet-Upstream", "")
        return int(resp.status), upstream, body["data"][0]["embedding"]


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_curls() -> list[str]:
    """The curl lines of the README's "Try it" block (continuations joined)."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## Try it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def _check_readme(url: str) -> None:
    answers = []
    for line in _readme_curls():
        cmd = line.replace("http://127.0.0.1:8000", url)
        done = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        answers.append(json.loads(done.stdout))
    embeddings, predict, stats, models, wrong = answers
    assert [len(d["embedding"]) for d in embeddings["data"]] == [384, 384]
    assert len(predict["output"]) == 384
    assert len(stats["workers"]) == 2
    assert [m["id"] for m in models["data"]] == ["all-MiniLM-L6-v2"]
    assert wrong["error"]["code"] == "model_not_found"
    assert wrong["error"]["param"] == "model"


def _ready(state: dict[str, Any]) -> bool:
    workers = state.get("workers", [])
    return (
        len(workers) == 2
        and all(w["state"] == "ready" for w in workers)
        and state["router"]["state"] == "ready"
    )


def test_default_model_on_every_worker_and_a_killed_up_takes_its_children(
    tmp_path: Path,
) -> None:
    # `make run` is `HF_HUB_OFFLINE=1 gpufleet up` (run_server sets the env); `--gpus none`
    # keeps the two CPU workers on a runner that has a GPU too.
    args = ["up", "--gpus", "none", "--cpu-workers", "2"]
    with run_server(args, cwd=tmp_path, timeout=150) as fleet:
        state = wait_state(tmp_path, _ready, timeout=60)
        assert {w["serves"] for w in state["workers"]} == {"minilm"}, state["workers"]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _embed(fleet.url, f"sentence {i}"), range(32)))
        assert {status for status, _, _ in answers} == {200}
        assert {len(vector) for _, _, vector in answers} == {384}
        assert len({upstream for _, upstream, _ in answers}) == 2, answers
        with urllib.request.urlopen(f"{fleet.url}/stats", timeout=10) as resp:
            served = {w["url"]: w["served"] for w in json.loads(resp.read())["workers"]}
        urls = {w["url"] for w in state["workers"]}
        assert {url for url, n in served.items() if n} == urls, served
        _check_readme(fleet.url)  # the README's "Try it" lines answer what it says

        # SIGKILL gives `up` no chance to stop anything: its children must go by themselves.
        children = [state["router"]["pid"], *(w["pid"] for w in state["workers"])]
        fleet.kill()
        deadline = time.monotonic() + 20
        while any(is_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in children if is_alive(pid)]
        for pid in left:  # not to leak them into the next test when this one fails
            os.kill(pid, signal.SIGKILL)
        assert left == [], f"children of a SIGKILLed up still run: {left}"
