"""`gpufleet generate` never follows a link planted in its output folder (issue 13).

A link at ``results.jsonl``, ``summary.json`` and an output's name points outside the
folder, and a directory sits where another output goes: nothing outside is written, the
links are replaced, the blocked item is recorded as failed with its reason, the job
finishes with its summary, and re-runs work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpufleet.testing import run_worker

N = 12


def _generate(prompts: Path, out: Path, url: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gpufleet", "generate", "--prompts-file", str(prompts)]
    cmd += ["--output", str(out), "--seed", "1", "--progress", "plain", "--endpoint", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _summary(out: Path) -> dict[str, Any]:
    path = out / "summary.json"
    assert not path.is_symlink()
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_planted_links_are_never_followed_and_the_job_finishes(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    ids = ["victim", "blocked", *(f"p{i}" for i in range(N - 2))]
    prompts.write_text("".join(json.dumps({"id": i, "input": f"text {i}"}) + "\n" for i in ids))
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    targets = {}
    for name in ("results.jsonl", "summary.json", "victim.json"):
        target = outside / f"{name}.txt"
        target.write_text("ORIGINAL\n")
        target.chmod(0o640)
        (out / name).symlink_to(target)
        targets[target] = target.stat()
    (out / "blocked.json").mkdir()
    (out / "blocked.json" / "keep").write_text("x")

    with run_worker("synthetic", "--model-arg", "base_ms=1") as worker:
        first = _generate(prompts, out, worker.url)
        summary = _summary(out)
        assert (summary["total"], summary["succeeded"], summary["failed"]) == (N, N - 1, 1)
        assert "cannot write output" in summary["errors"]["blocked"], summary["errors"]
        assert first.returncode != 0  # a failed item
        assert "Traceback" not in first.stderr, first.stderr
        for target, before in targets.items():
            after = target.stat()
            assert target.read_text() == "ORIGINAL\n", target
            assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
        for name in ("results.jsonl", "victim.json"):
            assert not (out / name).is_symlink(), name
        assert json.loads((out / "victim.json").read_text())["echo"] == "text victim"
        records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert len(records) == N
        assert {r["id"]: r["status"] for r in records}["blocked"] == "failed"

        # A re-run redoes only the blocked item (still blocked), then, once it is free, it.
        again = _generate(prompts, out, worker.url)
        summary = _summary(out)
        assert (summary["skipped"], summary["failed"]) == (N - 1, 1), again.stderr
        (out / "blocked.json" / "keep").unlink()
        (out / "blocked.json").rmdir()
        # A link planted since at an output the log says is done: it is not done.
        os.unlink(out / "p0.json")
        (out / "p0.json").symlink_to(outside / "victim.json.txt")
        last = _generate(prompts, out, worker.url)
        assert last.returncode == 0, last.stderr
        summary = _summary(out)
        assert (summary["skipped"], summary["succeeded"], summary["failed"]) == (N - 2, 2, 0)
        assert not (out / "p0.json").is_symlink()
        assert (outside / "victim.json.txt").read_text() == "ORIGINAL\n"
