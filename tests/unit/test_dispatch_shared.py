"""The dispatcher as the batch runner drives it: an attempt callable, not HTTP.

A "busy" answer that costs no attempt (``busy_is_attempt=False``), an endpoint that
learns no cap from it (``learns_cap=False``), and slots that grow while a job runs (the
runner follows its pool's capacity). On virtual time, so the waits are exact.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from gpufleet.client.dispatch import Attempt, Dispatcher, ProbeOutcome, ServerBusy
from gpufleet.client.endpoints import Endpoint
from gpufleet.client.items import Answer, Item
from gpufleet.config.client import ClientConfig
from tests.unit._virtual_time import on_virtual_time

CFG = ClientConfig(max_attempts=3, retry_base_s=0.01, retry_max_s=0.05)


async def _up(ep: Endpoint) -> ProbeOutcome:
    return "up"


def _busy_then_ok(times: int, calls: Counter[str]) -> Attempt:
    async def attempt(ep: Endpoint, item: Item, budget_s: float) -> Answer:
        calls[str(item.id)] += 1
        if calls[str(item.id)] <= times:
            raise ServerBusy("full", status=503, retryable=True, retry_after_s=0.1)
        await asyncio.sleep(0.01)
        return Answer(item.input)

    return attempt


@on_virtual_time
async def test_busy_is_not_an_attempt_when_told_so() -> None:
    calls: Counter[str] = Counter()
    ep = Endpoint("pool default", 0, 4, learns_cap=False)
    job = Dispatcher([ep], CFG, _busy_then_ok(5, calls), _up, busy_is_attempt=False)
    start = asyncio.get_running_loop().time()
    results = [r async for r in job.run([Item(i, id=str(i)) for i in range(4)])]
    assert sorted(r.output for r in results) == [0, 1, 2, 3]
    assert all(r.ok and r.attempts == 1 for r in results)  # five "busy" answers each
    assert min(calls.values()) == 6
    # Each "busy" paused the endpoint for its Retry-After: at least five pauses went by.
    assert asyncio.get_running_loop().time() - start >= 0.5
    assert ep.limit is None  # a known capacity: no cap learnt from "busy"


@on_virtual_time
async def test_busy_counts_as_an_attempt_for_the_client() -> None:
    calls: Counter[str] = Counter()
    ep = Endpoint("http://a", 0, 4)
    job = Dispatcher([ep], CFG, _busy_then_ok(5, calls), _up)
    results = [r async for r in job.run([Item(i, id=str(i)) for i in range(4)])]
    assert all(r.status == "failed" and r.attempts == 3 for r in results)
    assert ep.limit is not None  # it learnt that fewer fit


@on_virtual_time
async def test_slots_raised_while_a_job_runs_are_used_at_once() -> None:
    ep = Endpoint("pool default", 0, 1, learns_cap=False)
    in_flight, peaks = 0, []

    async def attempt(e: Endpoint, item: Item, budget_s: float) -> Answer:
        nonlocal in_flight
        in_flight += 1
        peaks.append(in_flight)
        e.slots = 5  # the owner learnt that its pool takes more
        await asyncio.sleep(0.1)
        in_flight -= 1
        return Answer(item.input)

    job = Dispatcher([ep], CFG, attempt, _up)
    start = asyncio.get_running_loop().time()
    results = [r async for r in job.run([Item(i, id=str(i)) for i in range(11)])]
    assert len(results) == 11
    assert max(peaks) == 5
    # One alone, then five, then five: three rounds of 0.1 s, not eleven.
    assert abs(asyncio.get_running_loop().time() - start - 0.3) < 1e-6
