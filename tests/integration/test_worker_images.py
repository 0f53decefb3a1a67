"""``image-demo`` served by a real worker: OpenAI images route, base64 JSON, raw PNG bytes."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

from gpufleet.testing import ServerProcess, run_worker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def worker() -> Iterator[ServerProcess]:
    with run_worker("image-demo") as w:
        yield w


async def _generate(url: str, **body: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/v1/images/generations", json=body) as r,
    ):
        return r.status, await r.json()


async def test_generations_are_seeded_pngs(worker: ServerProcess) -> None:
    status, body = await _generate(worker.url, prompt="a lighthouse at sunset", n=2, seed=7)
    assert status == 200
    images = [base64.b64decode(d["b64_json"]) for d in body["data"]]
    assert len(images) == 2
    assert all(i.startswith(PNG_MAGIC) for i in images)
    assert images[0] != images[1]  # seeds 7 and 8
    _, again = await _generate(worker.url, prompt="a lighthouse at sunset", n=1, seed=7)
    assert base64.b64decode(again["data"][0]["b64_json"]) == images[0]
    assert Image.open(io.BytesIO(images[0])).size == (256, 256)


async def test_size_and_bad_requests(worker: ServerProcess) -> None:
    status, body = await _generate(worker.url, prompt="snow", size="64x32")
    assert status == 200
    png = base64.b64decode(body["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(png)).size == (64, 32)
    for bad in (
        {"prompt": ""},
        {"prompt": "x", "n": 0},
        {"prompt": "x", "response_format": "url"},
        {"prompt": "x", "size": "huge"},
    ):
        status, body = await _generate(worker.url, **bad)
        assert status == 422, bad
        assert body["error"]["message"]


async def test_predict_answers_base64_json_or_raw_png(worker: ServerProcess) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(worker.url + "/predict", json={"input": "ocean", "seed": 3}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["output_encoding"] == "base64"
        assert body["content_type"] == "image/png"
        from_json = base64.b64decode(body["output"])
        headers = {"Accept": "image/png"}
        async with s.post(
            worker.url + "/predict", json={"input": "ocean", "seed": 3}, headers=headers
        ) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "image/png"
            raw = await r.read()
        assert raw == from_json
        assert raw.startswith(PNG_MAGIC)
        async with s.post(worker.url + "/predict", json={"input": 42}) as r:
            assert r.status == 422  # well-formed JSON of the wrong shape
