"""``minilm`` served by a real worker: the packaged all-MiniLM-L6-v2 weights, no mocks."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest

from gpufleet.models.minilm import MiniLM
from gpufleet.testing import ServerProcess, run_router, run_worker
from tests.integration.test_batches import FINAL, _client, _output, _served, _wait


@pytest.fixture(scope="module")
def worker() -> Iterator[ServerProcess]:
    with run_worker("minilm", "--max-batch-size", "16", "--device", "cpu", timeout=120) as w:
        yield w


@pytest.fixture(scope="module")
def reference() -> MiniLM:
    model = MiniLM()
    model.setup("cpu")
    return model


async def _embed(url: str, texts: Any, **extra: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/v1/embeddings", json={"input": texts, **extra}) as r,
    ):
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
        return data


async def test_64_concurrent_callers_are_batched_without_mix_ups(
    worker: ServerProcess, reference: MiniLM
) -> None:
    texts = [
        f"request number {i}: {['cats', 'dogs', 'birds', 'fish'][i % 4]} {i * 7}" for i in range(64)
    ]
    async with aiohttp.ClientSession() as s:
        before = await (await s.get(worker.url + "/stats")).json()

        async def one(text: str) -> list[float]:
            async with s.post(worker.url + "/predict", json={"input": text}) as r:
                assert r.status == 200
                out: list[float] = (await r.json())["output"]
                return out

        outputs = await asyncio.gather(*(one(t) for t in texts))
        after = await (await s.get(worker.url + "/stats")).json()
    # This test runs first on the module's worker, so /stats counts only its requests;
    # run alone or later, the batches it added still must average above 4.
    assert 64 / (after["batches"] - before["batches"]) > 4, after
    if before["batches"] == 0:
        assert after["avg_batch_size"] > 4, after
    expected = reference.predict(texts)
    for text, got, want in zip(texts, outputs, expected, strict=True):
        np.testing.assert_allclose(np.array(got), want, atol=1e-4, err_msg=text)


async def test_embeddings_are_unit_norm_and_semantic(worker: ServerProcess) -> None:
    texts = ["a cat sits on the mat", "a kitten rests on a rug", "stock markets fell sharply"]
    body = await _embed(worker.url, texts)
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    vectors = [np.array(d["embedding"]) for d in body["data"]]
    for v in vectors:
        assert v.shape == (384,)
        assert abs(np.linalg.norm(v) - 1.0) < 1e-4
    cat, kitten, stocks = vectors
    assert cat @ kitten > cat @ stocks + 0.3


async def test_embeddings_accept_one_string_and_base64(worker: ServerProcess) -> None:
    floats = (await _embed(worker.url, "hello world"))["data"][0]["embedding"]
    packed = (await _embed(worker.url, "hello world", encoding_format="base64"))["data"][0]
    decoded = np.frombuffer(base64.b64decode(packed["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, np.array(floats, dtype=np.float32), atol=1e-6)


async def test_bad_embedding_requests_are_422_or_400(worker: ServerProcess) -> None:
    async with aiohttp.ClientSession() as s:
        for body, status in (({"input": []}, 422), ({"input": [1, 2]}, 422), ({}, 422)):
            async with s.post(worker.url + "/v1/embeddings", json=body) as r:
                assert r.status == status, body
        async with s.post(worker.url + "/predict", json={"input": 5}) as r:
            assert r.status == 422  # well-formed JSON of the wrong shape
            assert "strings" in (await r.json())["message"]


def test_an_embeddings_batch_on_minilm(worker: ServerProcess, tmp_path: Path) -> None:
    """A batch of ``/v1/embeddings`` through a router's Batch API, on this module's worker
    (one MiniLM start for the module: a start costs about 10 CPU-seconds)."""
    texts = [f"sentence number {i}" for i in range(24)]
    data = "".join(
        json.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"input": text, "model": "minilm"},
            }
        )
        + "\n"
        for i, text in enumerate(texts)
    ).encode()
    served_before = _served([worker.url])
    with run_router([worker.url], "--batch-store", str(tmp_path / "store")) as router:
        client = _client(router)
        uploaded = client.files.create(file=("emb.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        done = _wait(client, batch.id, lambda b: b.status in FINAL, within=120, what="done")
        assert done.status == "completed"
        lines = _output(client, done.output_file_id)
        assert [line["custom_id"] for line in lines] == [f"e{i}" for i in range(24)]
        for line in lines:
            body = line["response"]["body"]
            assert body["object"] == "list"
            assert len(body["data"][0]["embedding"]) == 384
        assert _served([worker.url]) - served_before == 24
        # The same client reads it back as OpenAI's types.
        assert isinstance(client.batches.retrieve(batch.id), openai.types.Batch)
