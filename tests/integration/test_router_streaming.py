"""Streams pass through the router as they are made; a caller that leaves cancels upstream."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp

from gpufleet.testing import run_router, run_worker
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import get_json, wait_for


async def test_server_sent_events_arrive_one_by_one() -> None:
    with run_upstream() as upstream, run_router([upstream.url]) as router:
        arrivals: list[float] = []
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(router.url + "/sse?n=6&interval_ms=200") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["X-Accel-Buffering"] == "no"
            started = time.monotonic()
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n\n" in buffer:
                    _, buffer = buffer.split(b"\n\n", 1)
                    arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 6
    spread = arrivals[-1] - arrivals[0]
    print("event arrivals (s):", [round(t, 3) for t in arrivals])
    # The upstream spaces the events 1 s apart end to end; buffering would collapse that.
    assert spread > 0.7, arrivals
    assert arrivals[0] < arrivals[-1] - 0.7
    # Events arrive about when they were sent, not held for the next one (the median gap;
    # a stall of the loaded machine may merge one pair).
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    assert gaps[len(gaps) // 2] > 0.1, gaps


async def test_client_disconnect_cancels_the_upstream_request() -> None:
    with run_upstream() as upstream, run_router([upstream.url]) as router:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.post(
                    router.url + "/slow?ms=5000",
                    json={"input": "x"},
                    timeout=aiohttp.ClientTimeout(total=0.5),
                ) as resp:
                    await resp.read()
            except TimeoutError:
                pass
            else:
                raise AssertionError("the slow request answered before the client left")

        async def upstream_saw_cancel() -> bool:
            seen = await get_json(upstream.url + "/stats")
            return bool(seen["cancelled"] == 1)

        # Well before the 5 s the upstream would have taken.
        took = await wait_for(upstream_saw_cancel, within=3.0, what="upstream cancel")
        print(f"upstream saw the cancel {took:.2f}s after the client left")
        seen = await get_json(upstream.url + "/stats")
        assert seen["completed"] == 0
        stats = await get_json(router.url + "/stats")
        assert stats["totals"]["in_flight"] == 0
        assert stats["workers"][0]["in_flight"] == 0


async def test_client_disconnect_takes_the_item_out_of_the_worker_queue() -> None:
    # One item per batch, 1.5 s each: the second request waits in the worker's queue.
    with (
        run_worker(
            "synthetic",
            "--model-arg",
            "base_ms=1500",
            "--model-arg",
            "per_item_ms=0",
            "--max-batch-size",
            "1",
        ) as worker,
        run_router([worker.url], "--max-outstanding", "4") as router,
    ):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def call(input_: str, timeout_s: float) -> int:
                async with session.post(
                    router.url + "/predict",
                    json={"input": input_},
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                ) as resp:
                    await resp.read()
                    return resp.status

            first = asyncio.create_task(call("first", 20))
            await asyncio.sleep(0.3)
            try:
                await call("second", 0.4)
            except TimeoutError:
                pass
            else:
                raise AssertionError("the queued request answered before the client left")

            async def worker_dropped_it() -> bool:
                return bool((await get_json(worker.url + "/stats"))["dropped"] >= 1)

            await wait_for(worker_dropped_it, within=5.0, what="worker dropped the item")
            assert await first == 200
        worker_stats = await get_json(worker.url + "/stats")
        # The second item left the queue without reaching the model.
        assert (worker_stats["served"], worker_stats["batches"]) == (1, 1), worker_stats
        assert worker_stats["queue_depth"] == 0
        router_stats = await get_json(router.url + "/stats")
        assert router_stats["totals"]["in_flight"] == 0
