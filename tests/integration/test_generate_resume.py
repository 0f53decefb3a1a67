"""`gpufleet generate` killed with SIGKILL half-way and run again: one output per id.

The second run must send no request for items the first one finished, and must leave
their files untouched; the workers' own ``served`` counters are the witness.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from gpufleet.client.outputs import unique_stems
from gpufleet.testing import ServerProcess, run_worker

N = 120


def _stats(w: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(w.url + "/stats", timeout=5) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


def _settled_served(workers: list[ServerProcess]) -> int:
    """Total items served once nothing is queued or running (a killed client's leftovers)."""
    deadline = time.monotonic() + 15
    while True:
        stats = [_stats(w) for w in workers]
        if all(s["in_flight"] == 0 and s["queue_depth"] == 0 for s in stats):
            return sum(int(s["served"]) for s in stats)
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)


def _records(out: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    path = out / "results.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def _generate(prompts: Path, out: Path, urls: list[str], *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "gpufleet", "generate", "--prompts-file", str(prompts)]
    cmd += ["--output", str(out), "--seed", "42", "--progress", "plain", *extra]
    return cmd + [a for u in urls for a in ("--endpoint", u)]


def _started(
    prompts: Path, out: Path, urls: list[str], *, completed_items: int
) -> subprocess.Popen[str]:
    """``gpufleet generate -v`` started, returned once its log says ``completed_items``
    items completed (or it ended first)."""
    proc = subprocess.Popen(
        _generate(prompts, out, urls, "-v"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    completed = 0
    for line in proc.stderr:
        completed += "completed in" in line
        if completed >= completed_items:
            break
    return proc


def test_sigkill_half_way_then_rerun(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(N)))
    out = tmp_path / "out"
    args = ["--model-arg", "base_ms=40", "--max-batch-size", "1"]
    with run_worker("synthetic", *args) as w1, run_worker("synthetic", *args) as w2:
        workers, urls = [w1, w2], [w1.url, w2.url]
        served_0 = _settled_served(workers)
        proc = _started(prompts, out, urls, completed_items=N // 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL

        first = {r["key"]: r for r in _records(out) if r["status"] == "ok"}
        assert 0 < len(first) < N
        kept = {r["file"]: (out / r["file"]).stat() for r in first.values()}
        served_1 = _settled_served(workers)
        assert served_1 - served_0 >= len(first)

        rerun = subprocess.run(
            _generate(prompts, out, urls), capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
        served_2 = _settled_served(workers)

    # The second run asked for exactly the items the first did not record as done.
    assert served_2 - served_1 == N - len(first)
    second = _records(out)[len(_records(out)) - (N - len(first)) :]
    assert {r["key"] for r in second}.isdisjoint(first)
    # Exactly one output per id, nothing half-written, completed ones untouched.
    stems = unique_stems([f"{i:06d}" for i in range(1, N + 1)])
    outputs = sorted(
        p.name for p in out.iterdir() if p.name not in {"results.jsonl", "summary.json"}
    )
    assert outputs == sorted(f"{s}.json" for s in stems)
    for name, before in kept.items():
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    for i, stem in enumerate(stems):
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["echo"] == f"prompt number {i}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is True
    assert summary["skipped"] == len(first)
    assert summary["succeeded"] == N - len(first)


def test_sigterm_stops_cleanly_and_the_rerun_finishes(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"p{i}\n" for i in range(60)))
    out = tmp_path / "out"
    with run_worker("synthetic", "--model-arg", "base_ms=40", "--max-batch-size", "1") as w:
        proc = _started(prompts, out, [w.url], completed_items=10)
        proc.terminate()
        assert proc.stderr is not None
        tail = proc.stderr.read()
        proc.wait(timeout=15)
        proc.stderr.close()
        assert proc.returncode == 143, tail
        assert "run the same command again to resume" in tail
        assert not list(out.glob(".*.gpufleet-tmp"))
        done_first = len([r for r in _records(out) if r["status"] == "ok"])
        assert done_first < 60
        rerun = subprocess.run(
            _generate(prompts, out, [w.url]), capture_output=True, text=True, timeout=60
        )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["skipped"], summary["succeeded"]) == (done_first, 60 - done_first)
    assert len(list(out.glob("*.json"))) == 60 + 1  # outputs and summary.json
