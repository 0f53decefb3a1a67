"""The worker's HTTP contract against a real ``gpufleet worker --model synthetic`` process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gpufleet import wire
from gpufleet.testing import ServerProcess, run_worker


@pytest.fixture(scope="module")
def worker() -> Iterator[ServerProcess]:
    with run_worker(
        "synthetic",
        "--model-arg",
        "base_ms=5",
        "--model-arg",
        "per_item_ms=1",
        "--max-batch-size",
        "8",
        "--max-body-mb",
        "0.01",
    ) as w:
        yield w


async def _post(url: str, body: Any, **kw: Any) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, **kw) as r:
        return r.status, dict(r.headers), await r.json()


async def test_single_and_many_inputs(worker: ServerProcess) -> None:
    status, headers, body = await _post(worker.url + "/predict", {"input": "hi"})
    assert status == 200
    assert headers[wire.SERVER_HEADER] == "1"
    assert body["output"]["echo"] == "hi"
    assert body["output"]["pid"] == worker.pid
    status, _, body = await _post(worker.url + "/predict", {"inputs": [1, "two", {"x": 3}]})
    assert status == 200
    assert [o["echo"] for o in body["outputs"]] == [1, "two", {"x": 3}]


async def test_many_inputs_span_batches_in_order(worker: ServerProcess) -> None:
    inputs = list(range(30))  # max batch 8: at least 4 batches
    status, _, body = await _post(worker.url + "/predict", {"inputs": inputs})
    assert status == 200
    assert [o["echo"] for o in body["outputs"]] == inputs
    assert max(o["batch_size"] for o in body["outputs"]) <= 8


async def test_health_and_stats_fields(worker: ServerProcess) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(worker.url + "/health") as r:
            assert r.status == 200
            assert await r.json() == {"status": "ready"}
            assert r.headers[wire.SERVER_HEADER] == "1"
        async with s.get(worker.url + "/stats") as r:
            stats = await r.json()
    for key in wire.WorkerStats.__annotations__:
        if key != "gpu":
            assert key in stats, key
    assert stats["server"] == wire.WORKER_SERVER_NAME
    assert stats["model"] == "synthetic"
    assert stats["state"] == "ready"
    assert stats["pid"] == worker.pid
    assert stats["max_batch_size"] == 8
    assert set(stats["latency_ms"]) == {"p50", "p99"}


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 422, "JSON object"),
        (b'{"inputs": []}', 422, "empty"),
        (b'{"inputs": "abc"}', 422, "must be a list"),
        (b'{"input": 1, "inputs": [1]}', 422, "exactly one"),
        (b'{"input": 1, "temperature": 2}', 422, "temperature"),
        (b'{"input": 1, "seed": "x"}', 422, "seed"),
    ],
)
async def test_bad_input_names_the_problem(
    worker: ServerProcess, raw: bytes, status: int, needle: str
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(worker.url + "/predict", data=raw) as r:
            assert r.status == status
            body = await r.json()
            assert needle in body["message"]
            assert body["error"]
        # The worker keeps serving.
        async with s.post(worker.url + "/predict", json={"input": 1}) as r:
            assert r.status == 200


async def test_oversized_body_is_413_from_content_length(worker: ServerProcess) -> None:
    big = b'{"input": "' + b"x" * 20_000 + b'"}'
    status, _, body = await _post(worker.url + "/predict", None, data=big)
    assert status == 413
    assert body["error"] == "PayloadTooLarge"
    assert "limit" in body["message"]


async def test_oversized_chunked_body_is_413(worker: ServerProcess) -> None:
    # No Content-Length: the limit (10 KiB here) must hold while the body is read.
    chunk = b"x" * 1024
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    body = b'{"input": "' + chunk * 20 + b'"}'
    pieces = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    try:
        writer.write(head)
        for piece in pieces:
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert status_line.split()[1] == b"413", status_line
    answer = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert answer["error"] == "PayloadTooLarge"
    assert "limit" in answer["message"]
    # The worker keeps serving.
    status, _, _ = await _post(worker.url + "/predict", {"input": 1})
    assert status == 200


async def test_unknown_route_and_wrong_kind_are_json_404(worker: ServerProcess) -> None:
    status, headers, body = await _post(worker.url + "/v1/embeddings", {"input": "x"})
    assert status == 404
    assert "embeddings" in body["error"]["message"]  # OpenAI's error object on /v1/
    assert body["error"]["code"] == "NotServed"
    assert headers[wire.SERVER_HEADER] == "1"
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    status, _, body = await _post(worker.url + "/v1/chat/completions", chat)
    assert status == 404
    assert "'chat'" in body["error"]["message"]


async def test_stream_is_server_sent_events(worker: ServerProcess) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(worker.url + "/predict", json={"input": "s", "stream": True}) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = await r.text()
    events = [line for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert len(events) == 5  # stream_chunks=4, then [DONE]


async def test_deadline_already_passed_is_504(worker: ServerProcess) -> None:
    headers = {wire.TIMEOUT_HEADER: "0"}
    status, _, body = await _post(worker.url + "/predict", {"input": 1}, headers=headers)
    assert status == 504
    assert body["error"] == "DeadlineExceeded"
    status, _, _ = await _post(
        worker.url + "/predict", {"input": 1}, headers={wire.TIMEOUT_HEADER: "soon"}
    )
    assert status == 400


async def test_concurrent_callers_get_their_own_outputs(worker: ServerProcess) -> None:
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> Any:
            async with s.post(worker.url + "/predict", json={"input": f"item-{i}"}) as r:
                assert r.status == 200
                return (await r.json())["output"]

        outs = await asyncio.gather(*(one(i) for i in range(40)))
    assert [o["echo"] for o in outs] == [f"item-{i}" for i in range(40)]
    assert max(o["batch_size"] for o in outs) > 1


async def test_metrics_are_prometheus_text(worker: ServerProcess) -> None:
    await _post(worker.url + "/predict", {"inputs": [1, 2, 3]})
    async with aiohttp.ClientSession() as s, s.get(worker.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    for name in (
        "gpufleet_worker_requests_total",
        "gpufleet_worker_errors_total",
        "gpufleet_worker_batch_size_bucket",
        "gpufleet_worker_queue_seconds_bucket",
        "gpufleet_worker_compute_seconds_bucket",
        "gpufleet_worker_ready 1.0",
    ):
        assert name in text, name
    assert 'gpufleet_worker_requests_total{route="/predict",status="200"}' in text


def test_bad_settings_exit_2_with_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("worker:\n  max_queue: 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gpufleet", "worker", "--model", "synthetic", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "max_queue" in proc.stderr


def test_settings_come_from_yaml_and_env(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("worker:\n  max_queue: 7\n  max_batch_size: 3\n")
    env = {"GPUFLEET_MAX_BATCH_SIZE": "5", "GPUFLEET_MODEL_ARGS": "base_ms=1"}
    with (
        run_worker("synthetic", "--config", str(cfg), env=env) as w,
        urllib.request.urlopen(w.url + "/stats", timeout=5) as r,
    ):
        stats = json.loads(r.read())
    assert stats["max_queue"] == 7
    assert stats["max_batch_size"] == 5
