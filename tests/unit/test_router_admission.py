"""Admission: fast path, FIFO waiting, bounds, and slots that never leak or go negative.

The tests run on virtual time (``_virtual_time.VirtualTimeLoop``) with the loop's clock as
the admission's and the upstreams' ``clock``: a queue timeout, a deadline or a policy's
hold ends at its exact time, and takes no wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gpufleet.errors import AdmissionRejected, NoHealthyBackend, UpstreamTimeout
from gpufleet.router.admission import Admission
from gpufleet.router.policies import Choice, Policy, make_policy
from gpufleet.router.pool import Pool
from gpufleet.router.upstream import READY, Upstream
from tests.unit._virtual_time import on_virtual_time


def _now() -> float:
    """The loop's (virtual) time."""
    return asyncio.get_running_loop().time()


def _setup(
    n: int = 2, cap: int = 1, policy: Policy | None = None, **kw: float
) -> tuple[Pool, Admission]:
    clock = asyncio.get_running_loop().time
    pool = Pool("default")
    for i in range(n):
        u = Upstream(f"w{i}", f"http://127.0.0.1:{9000 + i}", max_outstanding=cap, clock=clock)
        u.state = READY
        pool.members.append(u)
    pool.refresh()
    adm = Admission(
        pool,
        policy or make_policy("least-outstanding", pool),
        max_queue=int(kw.get("max_queue", 10)),
        queue_timeout_s=kw.get("queue_timeout_s", 5.0),
        clock=clock,
    )
    return pool, adm


def _far() -> float:
    return _now() + 60


@on_virtual_time
async def test_waiters_are_served_in_fifo_order() -> None:
    pool, adm = _setup(n=1)
    first = await adm.acquire(None, (), _far())
    order: list[int] = []

    async def wait(i: int) -> None:
        u = await adm.acquire(None, (), _far())
        order.append(i)
        await asyncio.sleep(0.1)  # holds its slot a while: the next one waits for it
        u.give_back(0.1)
        adm.dispatch()

    tasks = []
    for i in range(5):  # arrivals 10 ms apart, in this order
        tasks.append(asyncio.create_task(wait(i)))
        await asyncio.sleep(0.01)
    assert adm.depth == 5
    first.give_back(0.01)
    adm.dispatch()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert pool.members[0].in_flight == 0
    # Each waited for the one before it: 0 from 0.05 s (when the first slot came back),
    # then one every 0.1 s; the waits are measured on the admission's clock.
    waits = list(adm.classes["interactive"].waits)
    assert waits[1:] == pytest.approx([0.05 - i * 0.01 + i * 0.1 for i in range(5)])


@on_virtual_time
async def test_full_queue_is_refused_at_once_and_wait_is_bounded() -> None:
    _pool, adm = _setup(n=1, max_queue=1, queue_timeout_s=0.05)
    await adm.acquire(None, (), _far())
    started = _now()
    waiter = asyncio.create_task(adm.acquire(None, (), _far()))
    await asyncio.sleep(0)
    with pytest.raises(AdmissionRejected, match="full"):
        await adm.acquire(None, (), _far())
    assert _now() == started  # refused at once
    with pytest.raises(AdmissionRejected, match=r"within 0\.05s"):
        await waiter
    assert _now() - started == pytest.approx(0.05)  # ... and the wait ended at its bound
    assert adm.depth == 0
    assert (adm.rejected, adm.timed_out) == (1, 1)


@on_virtual_time
async def test_the_request_deadline_ends_a_wait_before_the_queue_timeout() -> None:
    pool, adm = _setup(n=1, queue_timeout_s=5.0)
    held = await adm.acquire(None, (), _far())
    started = _now()
    with pytest.raises(UpstreamTimeout):
        await adm.acquire(None, (), started + 0.3)
    assert _now() - started == pytest.approx(0.3)
    assert adm.depth == 0
    held.give_back(0.01)
    assert pool.members[0].in_flight == 0


@on_virtual_time
async def test_a_waiter_served_before_its_bound_is_not_timed_out() -> None:
    _pool, adm = _setup(n=1, queue_timeout_s=0.5)
    held = await adm.acquire(None, (), _far())

    async def release_at(t: float) -> None:
        await asyncio.sleep(t)
        held.give_back(t)
        adm.dispatch()

    releaser = asyncio.create_task(release_at(0.499))
    got = await adm.acquire(None, (), _far())
    await releaser
    assert got is held
    assert adm.timed_out == 0
    assert list(adm.classes["interactive"].waits) == pytest.approx([0.0, 0.499])


class _Holds:
    """A policy that holds every request ``hold_s`` (as capacity does for a faster upstream)."""

    name = "holds"

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.asked: list[tuple[float, float]] = []  # (loop time, waited_s) per call

    def choose(
        self,
        ready: Sequence[Upstream],
        key: str | None,
        waiting: int,
        waited_s: float,
        prompt: Sequence[int] | None = None,
    ) -> Choice:
        self.asked.append((_now(), waited_s))
        return ready[0] if waited_s >= self.hold_s - 1e-9 else self.hold_s - waited_s


@on_virtual_time
async def test_a_policy_hold_is_asked_again_after_the_hold() -> None:
    policy = _Holds(0.2)
    _pool, adm = _setup(n=1, policy=policy)
    started = _now()
    u = await adm.acquire(None, (), _far())
    assert u.in_flight == 1
    # Asked on arrival (fast path, then in the queue), then once more when the hold ran
    # out; waited_s is read on the admission's clock.
    assert [t - started for t, _ in policy.asked] == pytest.approx([0.0, 0.0, 0.2])
    assert [w for _, w in policy.asked] == pytest.approx([0.0, 0.0, 0.2])
    assert list(adm.classes["interactive"].waits) == pytest.approx([0.2])
    adm.close()


@on_virtual_time
async def test_no_ready_upstream_fails_at_once_and_wakes_waiters() -> None:
    pool, adm = _setup(n=1)
    with pytest.raises(NoHealthyBackend):
        await adm.acquire(None, ("w0",), _far())
    await adm.acquire(None, (), _far())
    started = _now()
    waiter = asyncio.create_task(adm.acquire(None, (), _far()))
    await asyncio.sleep(0)
    pool.members[0].state = "ejected"
    pool.refresh()
    adm.fail_all()
    with pytest.raises(NoHealthyBackend):
        await waiter
    assert _now() == started  # at once, not at its timeout


@on_virtual_time
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
