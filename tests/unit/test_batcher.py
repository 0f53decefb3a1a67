"""The batcher on a fake clock: nothing lost or duplicated, batches ≤ max, FIFO, bounded wait."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.config.worker import BatchConfig
from gpufleet.errors import TooManyInputs, WorkerOverloaded
from gpufleet.worker.batcher import Batcher, QueuedItem
from tests.unit._virtual_time import on_virtual_time


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# An arrival: (gap since the previous one in ms, inputs in the request, deadline in ms or None,
# cancelled by its caller?)
arrivals = st.lists(
    st.tuples(
        st.floats(0, 20, allow_nan=False),
        st.integers(1, 5),
        st.one_of(st.none(), st.floats(0, 30, allow_nan=False)),
        st.booleans(),
    ),
    max_size=40,
)


def simulate(
    cfg: BatchConfig, plan: list[tuple[float, int, float | None, bool]], busy_ms: float
) -> tuple[list[list[QueuedItem]], list[QueuedItem], list[QueuedItem], list[float]]:
    """Feed ``plan`` to a batcher whose consumer takes ``busy_ms`` per batch.

    Returns (batches, every item put, dropped items, dispatch time of each batch).
    """
    clock = FakeClock()
    dropped: list[QueuedItem] = []
    b = Batcher(cfg, clock=clock, on_drop=lambda item, now: dropped.append(item))
    pending = []
    t = 0.0
    for gap, n, deadline, cancelled in plan:
        t += gap / 1000
        pending.append((t, n, None if deadline is None else t + deadline / 1000, cancelled))
    items: list[QueuedItem] = []
    batches: list[list[QueuedItem]] = []
    times: list[float] = []
    free_at = 0.0
    steps = 0
    while pending or b.depth:
        steps += 1
        assert steps < 10_000, "the batcher stopped making progress"
        candidates = [pending[0][0]] if pending else []
        wake = b.next_wakeup()
        if wake is not None:
            candidates.append(max(wake, free_at))
        clock.now = max(clock.now, min(candidates))
        while pending and pending[0][0] <= clock.now:
            at, n, deadline, cancelled = pending.pop(0)
            new = [QueuedItem((len(items) + i), at, deadline) for i in range(n)]
            try:
                b.put(new)
            except TooManyInputs:
                assert n > cfg.max_queue  # only what could never fit
                continue
            except WorkerOverloaded:
                assert n <= cfg.max_queue
                # Refused only for live items: dead ones hold no slot.
                out = {id(i) for batch in batches for i in batch} | {id(i) for i in dropped}
                live = [i for i in items if id(i) not in out and not i.is_dead(clock.now)]
                assert len(live) + n > cfg.max_queue
                continue
            items.extend(new)
            if cancelled:  # the caller left at once: its items must never be handed out
                for item in new:
                    item.cancelled = True
                if len(items) % 2:  # as the worker does; else a later poll or put finds them
                    b.discard(new)
        if clock.now < free_at:
            continue
        batch = b.poll(clock.now)
        if batch:
            batches.append(batch)
            times.append(clock.now)
            free_at = clock.now + busy_ms / 1000
    return batches, items, dropped, times


@settings(max_examples=200, deadline=None)
@given(
    plan=arrivals,
    max_batch=st.integers(1, 8),
    max_wait=st.floats(0, 10, allow_nan=False),
    max_queue=st.integers(1, 30),
    busy_ms=st.sampled_from([0.0, 3.0, 25.0]),
)
def test_batcher_properties(
    plan: list[tuple[float, int, float | None, bool]],
    max_batch: int,
    max_wait: float,
    max_queue: int,
    busy_ms: float,
) -> None:
    cfg = BatchConfig(max_batch_size=max_batch, max_wait_ms=max_wait, max_queue=max_queue)
    batches, items, dropped, times = simulate(cfg, plan, busy_ms)
    handed = [i for batch in batches for i in batch]
    # Nothing lost or duplicated: every accepted item is handed out once or dropped once.
    assert len({id(i) for i in handed}) == len(handed)
    assert {id(i) for i in handed} | {id(i) for i in dropped} == {id(i) for i in items}
    assert not {id(i) for i in handed} & {id(i) for i in dropped}
    # Dead items never reach the model.
    for batch, at in zip(batches, times, strict=True):
        for item in batch:
            assert not item.cancelled
            assert item.deadline is None or at < item.deadline
    assert all(1 <= len(batch) <= max_batch for batch in batches)
    # FIFO.
    assert [i.payload for i in handed] == sorted(i.payload for i in handed)
    if busy_ms == 0:
        # A free consumer: no item waits longer than max_wait.
        for batch, at in zip(batches, times, strict=True):
            for item in batch:
                assert at - item.enqueued_at <= max_wait / 1000 + 1e-9


def test_full_batch_leaves_at_once_and_partial_after_max_wait() -> None:
    clock = FakeClock()
    b = Batcher(BatchConfig(max_batch_size=3, max_wait_ms=10, max_queue=10), clock=clock)
    b.put([QueuedItem(i, 0.0) for i in range(4)])
    first = b.poll(0.0)
    assert first is not None
    assert [i.payload for i in first] == [0, 1, 2]
    assert b.poll(0.005) is None
    assert b.next_wakeup() == pytest.approx(0.010)
    rest = b.poll(0.010)
    assert rest is not None
    assert [i.payload for i in rest] == [3]


def test_put_is_all_or_nothing() -> None:
    b = Batcher(BatchConfig(max_batch_size=2, max_wait_ms=1, max_queue=3))
    b.put([QueuedItem(0, 0.0), QueuedItem(1, 0.0)])
    with pytest.raises(WorkerOverloaded):
        b.put([QueuedItem(2, 0.0), QueuedItem(3, 0.0)])
    assert b.depth == 2
    b.put([QueuedItem(2, 0.0)])
    assert b.free_slots() == 0


def test_more_inputs_than_the_queue_holds_is_413_not_overloaded() -> None:
    b = Batcher(BatchConfig(max_batch_size=2, max_wait_ms=1, max_queue=2))
    # Even on an empty queue: three inputs can never fit, so retrying would not help.
    with pytest.raises(TooManyInputs) as info:
        b.put([QueuedItem(i, 0.0) for i in range(3)])
    assert info.value.http_status == 413
    assert info.value.retry_after_s is None
    assert "at most 2" in info.value.message
    assert b.depth == 0
    b.put([QueuedItem(0, 0.0), QueuedItem(1, 0.0)])
    with pytest.raises(WorkerOverloaded):
        b.put([QueuedItem(2, 0.0)])


def test_streams_hold_slots_against_max_queue() -> None:
    b = Batcher(BatchConfig(max_batch_size=2, max_wait_ms=1, max_queue=2))
    b.reserve()
    b.put([QueuedItem(0, 0.0)])
    with pytest.raises(WorkerOverloaded, match="1 streams open"):
        b.reserve()
    with pytest.raises(WorkerOverloaded):
        b.put([QueuedItem(1, 0.0)])
    b.release()
    b.put([QueuedItem(1, 0.0)])
    assert b.free_slots() == 0


def test_lowered_max_batch_size_applies_to_the_next_batch() -> None:
    b = Batcher(BatchConfig(max_batch_size=8, max_wait_ms=0, max_queue=20))
    b.put([QueuedItem(i, 0.0) for i in range(8)])
    b.max_batch_size = 3
    sizes = []
    while (batch := b.poll(1.0)) is not None:
        sizes.append(len(batch))
    assert sizes == [3, 3, 2]


@on_virtual_time  # the wait is exact, and takes no wall time
async def test_next_batch_waits_for_max_wait_then_returns_a_partial_batch() -> None:
    loop = asyncio.get_running_loop()
    b = Batcher(BatchConfig(max_batch_size=4, max_wait_ms=30, max_queue=10), clock=loop.time)
    started = loop.time()
    b.put([QueuedItem("a", started)])
    batch = await asyncio.wait_for(b.next_batch(), 2)
    assert [i.payload for i in batch] == ["a"]
    assert loop.time() - started == pytest.approx(0.030, abs=1e-6)


@on_virtual_time
async def test_next_batch_wakes_when_the_batch_fills() -> None:
    loop = asyncio.get_running_loop()
    b = Batcher(BatchConfig(max_batch_size=2, max_wait_ms=10_000, max_queue=10), clock=loop.time)
    task = asyncio.create_task(b.next_batch())
    await asyncio.sleep(0)
    b.put([QueuedItem(1, loop.time())])
    await asyncio.sleep(5)  # half of max_wait: one item is no batch yet
    assert not task.done()
    b.put([QueuedItem(2, loop.time())])
    batch = await asyncio.wait_for(task, 2)
    assert [i.payload for i in batch] == [1, 2]
    assert loop.time() == pytest.approx(5.0)  # at once when it filled, not at max_wait


@on_virtual_time
async def test_next_batch_drops_an_item_at_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    dropped: list[tuple[str, float]] = []
    b = Batcher(
        BatchConfig(max_batch_size=2, max_wait_ms=1_000, max_queue=10),
        clock=loop.time,
        on_drop=lambda item, now: dropped.append((item.payload, now)),
    )
    task = asyncio.create_task(b.next_batch())
    b.put([QueuedItem("late", 0.0, deadline=0.25)])
    await asyncio.sleep(0.5)
    # Woken at the deadline (before max_wait): the expired item left the queue then.
    assert [p for p, _ in dropped] == ["late"]
    assert [t for _, t in dropped] == pytest.approx([0.25])
    assert b.depth == 0
    assert not task.done()
    b.put([QueuedItem("next", loop.time())])
    batch = await asyncio.wait_for(task, 2)
    assert [i.payload for i in batch] == ["next"]
    assert loop.time() == pytest.approx(1.5)  # max_wait after it arrived


def test_a_departed_caller_frees_its_slots_at_once() -> None:
    # Issue 12: the slots were held until the batch loop polled again, i.e. until the
    # batch running on the device ended, so new callers were refused for callers long gone.
    dropped: list[QueuedItem] = []
    b = Batcher(
        BatchConfig(max_batch_size=1, max_wait_ms=0, max_queue=3),
        clock=FakeClock(),
        on_drop=lambda item, now: dropped.append(item),
    )
    gone, stays = [QueuedItem("a", 0.0), QueuedItem("b", 0.0)], [QueuedItem("c", 0.0)]
    b.put(gone)
    b.put(stays)
    with pytest.raises(WorkerOverloaded):
        b.put([QueuedItem("d", 0.0)])
    for item in gone:
        item.cancelled = True
    assert b.discard(gone) == 2
    assert dropped == gone
    assert b.depth == 1
    assert b.free_slots() == 2
    b.put([QueuedItem("d", 0.0), QueuedItem("e", 0.0)])
    assert b.discard(gone) == 0  # twice is harmless
    assert [i.payload for i in b.drain_all()] == ["c", "d", "e"]


def test_expired_items_hold_no_slot() -> None:
    clock = FakeClock()
    dropped: list[QueuedItem] = []
    b = Batcher(
        BatchConfig(max_batch_size=1, max_wait_ms=0, max_queue=2),
        clock=clock,
        on_drop=lambda item, now: dropped.append(item),
    )
    b.put([QueuedItem("a", 0.0, deadline=1.0), QueuedItem("b", 0.0)])
    with pytest.raises(WorkerOverloaded):
        b.put([QueuedItem("c", 0.5)])
    clock.now = 1.0
    b.put([QueuedItem("c", 1.0)])
    assert [i.payload for i in dropped] == ["a"]
    assert [i.payload for i in b.drain_all()] == ["b", "c"]


def test_interactive_items_go_before_queued_batch_class_ones() -> None:
    clock = FakeClock()
    b = Batcher(BatchConfig(max_batch_size=3, max_wait_ms=10, max_queue=20), clock=clock)
    b.put([QueuedItem(f"b{i}", 0.0, priority=1) for i in range(5)])
    b.put([QueuedItem(f"i{i}", 0.001, priority=0) for i in range(2)])
    first = b.poll(0.001)
    assert first is not None
    assert [i.payload for i in first] == ["i0", "i1", "b0"]  # each class in its order
    second = b.poll(0.001)
    assert second is not None
    assert [i.payload for i in second] == ["b1", "b2", "b3"]
    assert b.depth == 1
    # Still due from the oldest item, whatever its class.
    assert b.due_at() == pytest.approx(0.010)


@given(st.lists(st.integers(0, 1), min_size=1, max_size=40), st.integers(1, 8))
def test_priorities_lose_nothing_and_keep_each_class_in_order(prios: list[int], size: int) -> None:
    b = Batcher(BatchConfig(max_batch_size=size, max_wait_ms=0, max_queue=64), clock=FakeClock())
    b.put([QueuedItem((p, n), 0.0, priority=p) for n, p in enumerate(prios)])
    out: list[tuple[int, int]] = []
    while (batch := b.poll(1.0)) is not None:
        assert len(batch) <= size
        interactive_left = any(i.priority == 0 for i in b._queue)
        assert not (interactive_left and any(i.priority == 1 for i in batch))
        out += [i.payload for i in batch]
    assert sorted(out) == sorted((p, n) for n, p in enumerate(prios))
    for cls in (0, 1):
        seen = [n for p, n in out if p == cls]
        assert seen == sorted(seen)
