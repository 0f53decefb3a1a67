"""A user model's ``encode`` runs off the event loop: a slow one never stalls ``/health``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gpufleet.testing import ServerProcess, run_worker
from tests.integration._models import spec


@pytest.fixture(scope="module")
def worker() -> Iterator[ServerProcess]:
    with run_worker(spec("SlowEncode"), "--model-arg", "encode_s=1.0") as w:
        yield w


async def test_slow_encode_does_not_block_health(worker: ServerProcess) -> None:
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        slow = asyncio.create_task(s.post(worker.url + "/predict", json={"input": "slow"}))
        await asyncio.sleep(0.2)  # the request is in encode by now
        probes: list[float] = []
        while not slow.done():
            t = time.monotonic()
            async with s.get(worker.url + "/health") as r:
                assert r.status == 200
            probes.append(time.monotonic() - t)
            await asyncio.sleep(0.05)
        async with await slow as r:
            assert r.status == 200
            output = (await r.json())["output"]
        took = time.monotonic() - started
    assert took >= 1.0  # encode did sleep its second
    assert output["encoded"] == "slow"
    # Probes during the second of encode: on the loop, each would have waited for it.
    assert max(probes) < 0.5, probes
    assert len(probes) >= 3, probes
    assert output["thread"].startswith("gpufleet-device")


async def test_failing_encode_fails_only_its_own_caller(worker: ServerProcess) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(worker.url + "/predict", json={"inputs": ["a", "boom"]}) as r:
            assert r.status == 500
            body = await r.json()
            assert body["error"] == "ModelError"
            assert "cannot encode boom" in body["message"]

        async def one(x: str) -> tuple[int, Any]:
            async with s.post(worker.url + "/predict", json={"input": x}) as r:
                return r.status, await r.json()

        # Same batch (max wait 5 ms): "boom" fails, its neighbours do not.
        results = await asyncio.gather(one("a"), one("boom"), one("b"))
    assert [status for status, _ in results] == [200, 500, 200]
    assert results[0][1]["output"]["encoded"] == "a"
    assert results[2][1]["output"]["encoded"] == "b"
