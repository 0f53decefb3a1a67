"""Admission: fast path, FIFO waiting, bounds, and slots that never leak or go negative."""

from __future__ import annotations

import asyncio
import time

import pytest

from gpufleet.errors import AdmissionRejected, NoHealthyBackend
from gpufleet.router.admission import Admission
from gpufleet.router.policies import make_policy
from gpufleet.router.pool import Pool
from gpufleet.router.upstream import READY, Upstream


def _setup(n: int = 2, cap: int = 1, **kw: float) -> tuple[Pool, Admission]:
    pool = Pool("default")
    for i in range(n):
        u = Upstream(f"w{i}", f"http://127.0.0.1:{9000 + i}", max_outstanding=cap)
        u.state = READY
        pool.members.append(u)
    pool.refresh()
    adm = Admission(
        pool,
        make_policy("least-outstanding", pool),
        max_queue=int(kw.get("max_queue", 10)),
        queue_timeout_s=kw.get("queue_timeout_s", 5.0),
    )
    return pool, adm


def _far() -> float:
    return time.monotonic() + 60


async def test_waiters_are_served_in_fifo_order() -> None:
    pool, adm = _setup(n=1)
    first = await adm.acquire(None, (), _far())
    order: list[int] = []

    async def wait(i: int) -> None:
        u = await adm.acquire(None, (), _far())
        order.append(i)
        u.give_back(0.01)
        adm.dispatch()

    tasks = [asyncio.create_task(wait(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert adm.depth == 5
    first.give_back(0.01)
    adm.dispatch()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert pool.members[0].in_flight == 0


async def test_full_queue_is_refused_at_once_and_wait_is_bounded() -> None:
    _pool, adm = _setup(n=1, max_queue=1, queue_timeout_s=0.05)
    await adm.acquire(None, (), _far())
    waiter = asyncio.create_task(adm.acquire(None, (), _far()))
    await asyncio.sleep(0)
    with pytest.raises(AdmissionRejected):
        await adm.acquire(None, (), _far())
    with pytest.raises(AdmissionRejected):
        await waiter
    assert adm.depth == 0


async def test_no_ready_upstream_fails_at_once_and_wakes_waiters() -> None:
    pool, adm = _setup(n=1)
    with pytest.raises(NoHealthyBackend):
        await adm.acquire(None, ("w0",), _far())
    await adm.acquire(None, (), _far())
    waiter = asyncio.create_task(adm.acquire(None, (), _far()))
    await asyncio.sleep(0)
    pool.members[0].state = "ejected"
    pool.refresh()
    adm.fail_all()
    with pytest.raises(NoHealthyBackend):
        await waiter


async def test_cancelled_waiter_gives_its_slot_back() -> None:
    pool, adm = _setup(n=1)
    held = await adm.acquire(None, (), _far())
    waiter = asyncio.create_task(adm.acquire(None, (), _far()))
    await asyncio.sleep(0)
    held.give_back(0.01)
    adm.dispatch()  # hands the slot to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.members[0].in_flight == 0
    assert adm.depth == 0
