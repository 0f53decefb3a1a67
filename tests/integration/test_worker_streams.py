"""Streams hold a queue slot, and a caller who leaves closes the model's generator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet.testing import ServerProcess, run_worker
from tests.integration._models import spec


async def _stats(s: aiohttp.ClientSession, w: ServerProcess) -> dict[str, Any]:
    async with s.get(w.url + "/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


async def test_caller_leaving_mid_stream_closes_the_generator_on_the_device_thread(
    tmp_path: Path,
) -> None:
    record = tmp_path / "record"
    args = ["--model-arg", f"record={record}", "--model-arg", "chunks=50"]
    with run_worker(spec("RecordingStream"), *args) as w:
        async with aiohttp.ClientSession() as s:
            async with s.post(w.url + "/predict", json={"input": "x", "stream": True}) as r:
                assert r.status == 200
                first = await r.content.readline()
                assert first.startswith(b"data: ")
                assert (await _stats(s, w))["streams"] == 1
                r.close()  # the caller goes away mid-stream (49 pieces left)
            deadline = time.monotonic() + 10
            while not record.exists() or (await _stats(s, w))["streams_closed"] < 1:
                assert time.monotonic() < deadline, "the model's generator was never closed"
                await asyncio.sleep(0.05)
            stats = await _stats(s, w)
    how, sent, thread = record.read_text().split()
    assert how == "closed"
    assert int(sent) < 50
    assert thread.startswith("gpufleet-device")
    assert stats["streams"] == 0


async def test_streams_count_against_max_queue(tmp_path: Path) -> None:
    record = tmp_path / "record"
    args = [
        *("--model-arg", f"record={record}", "--model-arg", "chunks=6"),
        *("--model-arg", "chunk_s=0.2", "--max-queue", "1"),
    ]
    with run_worker(spec("RecordingStream"), *args) as w:
        async with aiohttp.ClientSession() as s:
            async with s.post(w.url + "/predict", json={"input": "a", "stream": True}) as first:
                assert first.status == 200
                await first.content.readline()
                # The one slot is held by the open stream: another stream or item must wait.
                for body in ({"input": "b", "stream": True}, {"input": "c"}):
                    async with s.post(w.url + "/predict", json=body) as r:
                        assert r.status == 503, body
                        assert r.headers["Retry-After"]
                        assert (await r.json())["error"] == "WorkerOverloaded"
                text = (await first.read()).decode()
                assert text.rstrip().endswith("data: [DONE]")
            async with s.post(w.url + "/predict", json={"input": "d"}) as r:
                assert r.status == 200
            stats = await _stats(s, w)
    assert stats["rejected"] == 2
    assert stats["streams"] == 0
    assert stats["streams_closed"] == 0  # the first stream ran to its end
    assert record.read_text().split()[:2] == ["finished", "6"]
