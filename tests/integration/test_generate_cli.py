"""`gpufleet generate` end to end against real workers: names, failures, settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpufleet.testing import run_worker


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gpufleet", "generate", "--progress", "plain", *args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**full_env, **(env or {})}
    )


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_hostile_ids_never_write_outside_the_folder(tmp_path: Path) -> None:
    ids = ["../../x", "/abs", "a" * 300, "dup", "dup", "DUP", "..", "nested/dir/n", "summary"]
    prompts = _jsonl(tmp_path / "p.jsonl", [{"id": i, "input": i} for i in ids])
    job = tmp_path / "job"
    out = job / "out"
    with run_worker("synthetic", "--model-arg", "base_ms=1") as w:
        done = _run("-f", str(prompts), "-o", str(out), "-e", w.url)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in job.iterdir()] == ["out"]
    assert not (tmp_path / "x").exists()
    assert not Path("/abs.json").exists()
    files = [p for p in out.iterdir() if p.name not in {"results.jsonl", "summary.json"}]
    assert len(files) == len(ids)
    assert len({p.name.lower() for p in files}) == len(ids)
    for p in files:
        assert p.is_file()
        assert p.resolve().parent == out.resolve()
        assert len(p.name) <= 110
    by_id: dict[str, list[str]] = {}
    for rec in _records(out):
        by_id.setdefault(rec["id"], []).append(rec["file"])
        assert json.loads((out / rec["file"]).read_text())["echo"] == rec["id"]
    assert sorted(by_id) == sorted(set(ids))
    assert len(by_id["dup"]) == 2


def test_failed_items_exit_non_zero_and_say_why(tmp_path: Path) -> None:
    rows = [{"id": f"ok{i}", "input": f"p{i}"} for i in range(6)]
    rows.append({"id": "bad", "input": "poison"})
    prompts = _jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "out"
    with run_worker("synthetic", "--model-arg", "base_ms=1", "--model-arg", "fail_on=poison") as w:
        done = _run("-f", str(prompts), "-o", str(out), "-e", w.url, "--max-attempts", "2", "-v")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["failed"] == 1
    bad = [r for r in _records(out) if r["id"] == "bad"]
    assert len(bad) == 1
    assert bad[0]["status"] == "failed"
    assert bad[0]["attempts"] == 2
    assert "ModelError" in bad[0]["error"]
    assert bad[0]["file"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is False
    assert (summary["succeeded"], summary["failed"]) == (6, 1)
    assert summary["endpoints"][w.url]["served"] == 6
    # -v prints the seed set-ups' log lines.
    assert "Using 1 endpoint(s)" in done.stderr
    assert f"item ok0 → {w.url}" in done.stderr
    assert "completed in" in done.stderr


def test_endpoints_from_env_and_yaml_and_errors(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\nfour\n")
    with (
        run_worker("synthetic", "--model-arg", "base_ms=1") as w1,
        run_worker("synthetic", "--model-arg", "base_ms=1") as w2,
    ):
        env = {"GPUFLEET_ENDPOINTS": f"{w1.url},{w2.url}"}
        by_env = _run("-f", str(prompts), "-o", str(tmp_path / "a"), "--seed", "1", env=env)
        cfg = tmp_path / "fleet.yaml"
        cfg.write_text(f"client:\n  endpoints: [{w2.url}]\n  seed: 3\n")
        by_yaml = _run("-f", str(prompts), "-o", str(tmp_path / "b"), "--config", str(cfg))
    assert by_env.returncode == 0, by_env.stderr
    assert by_yaml.returncode == 0, by_yaml.stderr
    served = json.loads((tmp_path / "a" / "summary.json").read_text())["endpoints"]
    assert set(served) == {w1.url, w2.url}
    assert sorted(r["seed"] for r in _records(tmp_path / "b")) == [3, 4, 5, 6]
    no_endpoint = _run("-f", str(prompts), "-o", str(tmp_path / "c"))
    assert no_endpoint.returncode == 2
    assert "no endpoints" in no_endpoint.stderr
    assert not (tmp_path / "c").exists()
