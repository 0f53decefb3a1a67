"""Admission's priority classes: interactive first, batch within its share of each cap.

The tests run on virtual time (``_virtual_time.VirtualTimeLoop``), the loop's clock being
the admission's: the waits they count are exact, and take no wall time.
"""

from __future__ import annotations

import asyncio

import pytest

from gpufleet.errors import BadRequest
from gpufleet.router.admission import BATCH, INTERACTIVE, Admission
from gpufleet.router.policies import make_policy
from gpufleet.router.pool import Pool
from gpufleet.router.request_head import priority as _priority
from gpufleet.router.stats import class_stats
from gpufleet.router.upstream import READY, Upstream
from tests.unit._virtual_time import on_virtual_time


def _now() -> float:
    """The loop's (virtual) time."""
    return asyncio.get_running_loop().time()


def _setup(n: int = 1, cap: int = 4, share: float = 0.75) -> tuple[Pool, Admission]:
    clock = asyncio.get_running_loop().time
    pool = Pool("default")
    for i in range(n):
        u = Upstream(f"w{i}", f"http://127.0.0.1:{9000 + i}", max_outstanding=cap, clock=clock)
        u.state = READY
        pool.members.append(u)
    pool.refresh()
    adm = Admission(
        pool,
        make_policy("least-outstanding", pool),
        max_queue=100,
        queue_timeout_s=5.0,
        batch_share=share,
        clock=clock,
    )
    return pool, adm


def _far() -> float:
    return _now() + 60


@on_virtual_time
async def test_batch_holds_at_most_its_share_of_a_cap() -> None:
    pool, adm = _setup(cap=4)
    taken = [await adm.acquire(None, (), _far(), priority=BATCH) for _ in range(3)]
    assert pool.members[0].in_flight == 3
    waiting = asyncio.create_task(adm.acquire(None, (), _far(), priority=BATCH))
    await asyncio.sleep(0)
    assert adm.depth_of(BATCH) == 1
    # The slot kept free goes to an interactive request at once.
    u = await adm.acquire(None, (), _far())
    assert u is pool.members[0]
    assert u.in_flight == 4
    u.give_back(0.01)
    adm.dispatch()
    await asyncio.sleep(0)
    assert not waiting.done()  # still 3 batch in flight: the share is full
    taken[0].give_back(0.01)
    adm.dispatch()
    assert (await waiting) is pool.members[0]
    assert adm.depth == 0


@on_virtual_time
async def test_interactive_fast_path_passes_waiting_batch_requests() -> None:
    _pool, adm = _setup(cap=4, share=0.5)
    await adm.acquire(None, (), _far(), priority=BATCH)
    await adm.acquire(None, (), _far(), priority=BATCH)
    queued = [asyncio.create_task(adm.acquire(None, (), _far(), priority=BATCH)) for _ in range(3)]
    await asyncio.sleep(0)
    assert adm.depth_of(BATCH) == 3
    first = await adm.acquire(None, (), _far())
    second = await adm.acquire(None, (), _far())
    assert first.in_flight == second.in_flight == 4
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)


@on_virtual_time
async def test_a_freed_slot_goes_to_a_waiting_interactive_request_first() -> None:
    pool, adm = _setup(cap=2, share=1.0)
    held = [await adm.acquire(None, (), _far()) for _ in range(2)]
    order: list[str] = []

    async def wait(priority: str) -> None:
        u = await adm.acquire(None, (), _far(), priority=priority)
        order.append(priority)
        u.give_back(0.01)
        adm.dispatch()

    # The batch request queued first; the interactive one still goes before it.
    tasks = [asyncio.create_task(wait(BATCH))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait(INTERACTIVE)))
    await asyncio.sleep(0)
    assert adm.depth_of(BATCH) == 1
    assert adm.depth_of(INTERACTIVE) == 1
    held[0].give_back(0.01)
    adm.dispatch()
    await asyncio.gather(*tasks)
    assert order == [INTERACTIVE, BATCH]
    held[1].give_back(0.01)
    assert pool.members[0].in_flight == 0


@on_virtual_time
async def test_no_batch_dispatch_while_interactive_waits() -> None:
    pool, adm = _setup(n=2, cap=2, share=1.0)
    held = [await adm.acquire(None, (), _far()) for _ in range(4)]
    # An interactive request that must avoid w1 waits for w0; a batch request behind it
    # does not take the slot w1 frees.
    inter = asyncio.create_task(adm.acquire(None, ("w1",), _far()))
    batch = asyncio.create_task(adm.acquire(None, (), _far(), priority=BATCH))
    await asyncio.sleep(0)
    w1 = next(u for u in held if u.id == "w1")
    w1.give_back(0.01)
    adm.dispatch()
    await asyncio.sleep(0)
    assert not batch.done()
    assert not inter.done()
    w0 = next(u for u in held if u.id == "w0")
    w0.give_back(0.01)
    adm.dispatch()
    assert (await inter).id == "w0"
    assert (await batch).id == "w1"
    assert sum(u.in_flight for u in pool.members) == 4


@on_virtual_time
async def test_a_cap_of_one_still_lets_batch_run() -> None:
    _pool, adm = _setup(cap=1)
    u = await adm.acquire(None, (), _far(), priority=BATCH)
    assert u.in_flight == 1
    assert adm.batch_cap(u) == 1


@on_virtual_time
async def test_class_stats_count_waits() -> None:
    _pool, adm = _setup(cap=1, share=1.0)
    u = await adm.acquire(None, (), _far(), priority=BATCH)
    waiters = [asyncio.create_task(adm.acquire(None, (), _far()))]
    await asyncio.sleep(0.02)
    waiters.append(asyncio.create_task(adm.acquire(None, (), _far())))
    await asyncio.sleep(0.01)
    stats = class_stats(adm)
    assert stats[INTERACTIVE].queue_depth == 2
    u.give_back(0.01)
    adm.dispatch()
    first = await waiters[0]  # waited 30 ms
    await asyncio.sleep(0.04)
    first.give_back(0.04)
    adm.dispatch()
    await waiters[1]  # waited 10 + 40 ms
    stats = class_stats(adm)
    assert stats[BATCH].admitted == 1
    assert stats[BATCH].wait_p99_ms == 0.0
    assert stats[INTERACTIVE].admitted == 2
    assert stats[INTERACTIVE].wait_p50_ms == pytest.approx(30.0)
    assert stats[INTERACTIVE].wait_p99_ms == pytest.approx(50.0)
    assert stats[INTERACTIVE].wait_mean_ms == pytest.approx(40.0)


def test_priority_header_values() -> None:
    assert _priority(None) == INTERACTIVE
    assert _priority(" Batch ") == BATCH
    assert _priority("interactive") == INTERACTIVE
    with pytest.raises(BadRequest, match="X-Gpufleet-Priority"):
        _priority("bulk")
