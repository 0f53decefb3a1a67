"""``gpufleet generate --server-side`` end to end: a router with the Batch API in front of
real synthetic workers; the same folder layout as ``generate``, failures recorded, names
never outside the folder, and a job whose terminal went away followed again, not resent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpufleet.testing import ServerProcess, run_router, run_worker
from tests.integration._openai import openai_client


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpufleet", "generate", "--progress", "plain", *args]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=120, env=_env())


def _prompts(path: Path, ids: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "input": i}) + "\n" for i in ids))
    return path


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _outputs(out: Path) -> dict[str, Any]:
    skip = {"results.jsonl", "summary.json"}
    return {p.name: json.loads(p.read_text())["echo"] for p in out.iterdir() if p.name not in skip}


@contextlib.contextmanager
def _fleet(tmp_path: Path, *worker_args: str) -> Iterator[ServerProcess]:
    with (
        run_worker("synthetic", *worker_args) as a,
        run_worker("synthetic", *worker_args) as b,
        run_router([a.url, b.url], "--batch-store", str(tmp_path / "store")) as router,
    ):
        yield router


def test_server_side_writes_what_generate_writes(tmp_path: Path) -> None:
    ids = [f"item-{i}" for i in range(40)] + ["../../escape", "dup", "dup", "summary"]
    prompts = _prompts(tmp_path / "p.jsonl", [*ids, "poison"])
    here, there = tmp_path / "client" / "out", tmp_path / "server" / "out"
    with _fleet(tmp_path, "--model-arg", "base_ms=2", "--model-arg", "fail_on=poison") as router:
        local = _run("-f", str(prompts), "-o", str(here), "-e", router.url, "--max-attempts", "2")
        remote = _run("-f", str(prompts), "-o", str(there), "-e", router.url, "--server-side")
        assert remote.returncode == 1, remote.stderr  # the poisoned item failed
        assert local.returncode == 1, local.stderr
        client = openai_client(router.url + "/v1")
        try:
            batches = client.batches.list().data
        finally:
            client.close()
        # Run again: the items done in the folder are not sent; the failed one is, alone
        # (as generate resends failed items).
        again = _run("-f", str(prompts), "-o", str(there), "-e", router.url, "--server-side")
        client = openai_client(router.url + "/v1")
        try:
            newest, *older = client.batches.list().data
        finally:
            client.close()
    assert len(batches) == 1
    assert [b.id for b in older] == [batches[0].id]
    assert newest.request_counts is not None
    assert newest.request_counts.total == 1
    assert json.loads(remote.stdout) == {
        "success": False,
        "succeeded": len(ids),
        "failed": 1,
        "skipped": 0,
    }
    assert json.loads(again.stdout) == {
        "success": False,
        "succeeded": 0,
        "failed": 1,
        "skipped": len(ids),
    }
    # The same names and outputs as the client-side job; nothing outside the folder.
    assert _outputs(there) == _outputs(here)
    assert len(_outputs(there)) == len(ids)
    assert sorted(p.name for p in (tmp_path / "server").iterdir()) == ["out"]
    assert not (tmp_path / "escape.json").exists()
    records = {r["key"]: r for r in _records(there)}
    assert records == {
        r["key"]: r
        | {
            "endpoint": records[r["key"]]["endpoint"],
            "upstream": None,
            "attempts": 1,
            "seconds": 0.0,
            "error": records[r["key"]]["error"],
        }
        for r in _records(here)
    }
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert [r["id"] for r in failed] == ["poison"]
    assert "ModelError" in failed[0]["error"]
    summary = json.loads((there / "summary.json").read_text())
    assert summary["dispatch"] == "server-side"
    assert summary["batch_status"] == "completed"
    assert not (there / ".gpufleet-batch.json").exists()


def test_a_job_whose_terminal_died_is_followed_not_sent_again(tmp_path: Path) -> None:
    ids = [f"i{n}" for n in range(60)]
    prompts = _prompts(tmp_path / "p.jsonl", ids)
    out = tmp_path / "out"
    with _fleet(tmp_path, "--model-arg", "base_ms=40") as router:
        first = subprocess.Popen(
            _cmd("-f", str(prompts), "-o", str(out), "-e", router.url, "--server-side"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(),
        )
        try:
            deadline = time.monotonic() + 60
            while not (out / ".gpufleet-batch.json").exists():
                assert first.poll() is None, "generate ended before it submitted"
                assert time.monotonic() < deadline, "no batch submitted"
                time.sleep(0.05)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        batch_id = json.loads((out / ".gpufleet-batch.json").read_text())["batch_id"]
        done = _run("-f", str(prompts), "-o", str(out), "-e", router.url, "--server-side")
        assert done.returncode == 0, done.stderr
        client = openai_client(router.url + "/v1")
        try:
            assert [b.id for b in client.batches.list().data] == [batch_id]
        finally:
            client.close()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["batch_id"], summary["succeeded"]) == (batch_id, len(ids))
    assert sorted(r["id"] for r in _records(out)) == sorted(ids)


def test_server_side_needs_one_endpoint(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", ["a"])
    args = ["-e", "http://127.0.0.1:9", "-e", "http://127.0.0.1:10"]
    done = _run("-f", str(prompts), "-o", str(tmp_path / "o"), *args, "--server-side")
    assert done.returncode != 0
    assert "one router" in done.stderr


def test_server_side_at_an_endpoint_without_the_batch_api_says_where_it_is(
    tmp_path: Path,
) -> None:
    prompts = _prompts(tmp_path / "p.jsonl", ["a"])
    with run_worker("synthetic") as worker:  # a worker answers 404 to /v1/files
        done = _run(
            "-f", str(prompts), "-o", str(tmp_path / "o"), "-e", worker.url, "--server-side"
        )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"POST {worker.url}/v1/files: HTTP 404" in done.stderr
    assert "no Batch API there" in done.stderr
