"""Passive ejection, the admission queue over HTTP, and slots that always come back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from gpufleet.testing import run_router
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import get_json, wait_for, wait_state, worker_entry


async def _get(
    session: aiohttp.ClientSession, url: str
) -> tuple[int, dict[str, str], bytes, float]:
    started = time.monotonic()
    async with session.get(url) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), body, time.monotonic() - started


async def _totals(router_url: str) -> dict[str, Any]:
    return dict((await get_json(router_url + "/stats"))["totals"])


async def test_5xx_answers_eject_passively_and_4xx_never_count() -> None:
    with (
        run_upstream() as upstream,
        run_router([upstream.url], "--max-fails", "3", "--fail-timeout", "20") as router,
    ):
        await wait_state(router.url, upstream.url, "ready", within=10)
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                status, *_ = await _get(session, router.url + "/status/404")
                assert status == 404
            entry = await worker_entry(router.url, upstream.url)
            assert (entry["state"], entry["errors"], entry["ejections"]) == ("ready", 0, 0)
            # The upstream calls these its own (a lone upstream is never ejected for a 5xx
            # that may have come from the request).
            for i in range(3):
                status, *_ = await _get(session, router.url + "/status/502?fault=worker")
                assert status == 502
                entry = await worker_entry(router.url, upstream.url)
                assert entry["errors"] == i + 1
                assert entry["state"] == ("ejected" if i == 2 else "ready"), entry
            assert entry["ejections"] == 1
            # Ejected for the fail timeout (probes pass, but do not re-admit it before):
            # refused every time it is asked for a second, not only at its end, and at once.
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                status, headers, body, took = await _get(session, router.url + "/echo")
                assert status == 503, body
                assert "Retry-After" in headers
                await asyncio.sleep(0.05)
            assert took < 0.5
        assert (await _totals(router.url))["in_flight"] == 0


async def test_the_admission_queue_is_fifo_bounded_and_times_out() -> None:
    with (
        run_upstream() as upstream,
        run_router(
            [upstream.url],
            "--max-outstanding",
            "1",
            "--max-queue",
            "2",
            "--queue-timeout",
            "2.5",
        ) as router,
    ):
        await wait_state(router.url, upstream.url, "ready", within=10)
        done: list[str] = []
        async with aiohttp.ClientSession() as session:

            async def call(tag: str, ms: int) -> tuple[int, dict[str, str], bytes, float]:
                answer = await _get(session, f"{router.url}/slow?ms={ms}&tag={tag}")
                done.append(tag)
                return answer

            async def reached(key: str, value: int) -> None:
                # The router's own count orders the requests, not a sleep between them.
                async def check() -> bool:
                    return bool((await _totals(router.url))[key] == value)

                await wait_for(check, within=2, what=f"{key} {value}")

            # The holder keeps the one slot for 2 s: time to queue the others, each less
            # than --queue-timeout behind it.
            holder = asyncio.create_task(call("hold", 2000))
            await reached("in_flight", 1)
            first = asyncio.create_task(call("a", 50))
            await reached("queue_depth", 1)
            second = asyncio.create_task(call("b", 50))
            await reached("queue_depth", 2)
            # The queue is full: the next one is refused at once.
            status, headers, body, took = await _get(session, router.url + "/slow?ms=10")
            assert status == 503, body
            assert int(headers["Retry-After"]) >= 1
            assert took < 0.5, took
            answers = await asyncio.gather(holder, first, second)
            assert [a[0] for a in answers] == [200, 200, 200]
            assert done == ["hold", "a", "b"]  # in the order they came
            # A wait past --queue-timeout is a 503 too, after about that long.
            holder = asyncio.create_task(call("hold2", 4500))
            await reached("in_flight", 1)
            status, headers, body, took = await _get(session, router.url + "/slow?ms=10")
            assert status == 503, body
            assert "Retry-After" in headers
            assert 2.2 < took < 4.0, took
            assert (await holder)[0] == 200
        totals = await _totals(router.url)
        assert (totals["in_flight"], totals["queue_depth"], totals["active"]) == (0, 0, 0)
        assert totals["rejected"] >= 1
        assert totals["queue_timeouts"] >= 1


async def test_no_slot_is_left_taken_after_full_queue_retries_and_streams() -> None:
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream("--gpufleet")) for _ in range(2)]
        router = stack.enter_context(run_router([u.url for u in ups], "--retries", "2"))
        for u in ups:
            await wait_state(router.url, u.url, "ready", within=10)
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                status, _, body, _ = await _get(session, router.url + "/overloaded")
                assert status == 503, body
                assert b"WorkerOverloaded" in body
            totals = await _totals(router.url)
            assert totals["retries"] >= 3
            assert (totals["in_flight"], totals["active"]) == (0, 0)
            status, _, body, _ = await _get(session, router.url + "/sse?n=4&interval_ms=50")
            assert status == 200
            assert body.count(b"data: ") == 4
        totals = await _totals(router.url)
        assert (totals["in_flight"], totals["queue_depth"], totals["active"]) == (0, 0, 0)
        for u in ups:
            assert (await worker_entry(router.url, u.url))["in_flight"] == 0
