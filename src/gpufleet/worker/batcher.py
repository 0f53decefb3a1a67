"""Dynamic batching: fill a batch to ``max_batch_size`` or ``max_wait_ms``, drop dead items.

Items of the ``batch`` class (a router's Batch API, ``X-Gpufleet-Priority: batch``) give
way: a batch takes the interactive items queued first, then batch ones, each in order.

The decision is a pure function of the queue and a time (``Batcher.poll(now)``), so it is
tested on a fake clock; ``Batcher.next_batch()`` is the thin async wrapper the worker's
batch loop awaits. ``clock`` is the only time it reads; ``next_batch`` waits on the
running loop's timers, so a test on a virtual loop passes the loop's ``time``.
``max_wait`` counts from the oldest queued item: when the device was busy and the head
already waited that long, a batch leaves at once with what is there.

Dead items (caller gone, deadline passed) never hold a slot of ``max_queue``: a caller that
leaves takes its items out with ``discard`` at once (not when the running batch ends and
the loop polls again), and a ``put`` that would not fit first drops the expired ones.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpufleet.config.worker import BatchConfig
from gpufleet.errors import TooManyInputs, WorkerOverloaded

Clock = Callable[[], float]


@dataclass(eq=False, slots=True)
class QueuedItem:
    """One input waiting for the model, and the future its caller awaits."""

    payload: Any
    enqueued_at: float
    #: Monotonic-clock time after which the caller no longer wants the answer.
    deadline: float | None = None
    #: Set by the caller when it went away; the item then never reaches the model.
    cancelled: bool = False
    #: 0 interactive, 1 batch (``X-Gpufleet-Priority``): a batch takes interactive items
    #: first, each class in its own arrival order.
    priority: int = 0
    future: asyncio.Future[Any] | None = field(default=None, repr=False)

    def is_dead(self, now: float) -> bool:
        """True when nobody will read this item's answer any more."""
        if self.cancelled or (self.future is not None and self.future.done()):
            return True
        return self.deadline is not None and now >= self.deadline


class Batcher:
    """A bounded FIFO of items that hands out batches; one consumer, many producers."""

    def __init__(
        self,
        cfg: BatchConfig,
        *,
        clock: Clock = time.monotonic,
        on_drop: Callable[[QueuedItem, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        #: Effective largest batch; the runner lowers it after an out-of-memory error.
        self.max_batch_size = cfg.max_batch_size
        self._max_wait_s = cfg.max_wait_ms / 1000.0
        self._clock = clock
        self._on_drop = on_drop
        self._queue: deque[QueuedItem] = deque()
        #: Slots held by open streams: they count against ``max_queue`` like queued items.
        self.reserved = 0
        self._changed: asyncio.Event | None = None

    @property
    def depth(self) -> int:
        """Items queued (a departed caller's leave at once through ``discard``)."""
        return len(self._queue)

    def free_slots(self) -> int:
        """How many more items the queue takes before it answers ``WorkerOverloaded``."""
        return self.cfg.max_queue - len(self._queue) - self.reserved

    def oldest_enqueued_at(self) -> float | None:
        """When the oldest item still queued arrived (None when the queue is empty)."""
        return self._queue[0].enqueued_at if self._queue else None

    def _check_room(self, n: int) -> None:
        if n > self.cfg.max_queue:
            raise TooManyInputs(
                f"the request holds {n} inputs; this worker queues at most "
                f"{self.cfg.max_queue} (--max-queue): send at most {self.cfg.max_queue} per request"
            )
        if n > self.free_slots():
            # Expired items would otherwise hold their slots until the batch loop polls
            # again, which waits for the batch on the device (issue 12).
            self.drop_dead(self._clock())
        if n > self.free_slots():
            raise WorkerOverloaded(
                f"queue full ({len(self._queue)} items queued, {self.reserved} streams open; "
                f"max {self.cfg.max_queue})"
            )

    def put(self, items: Sequence[QueuedItem]) -> None:
        """Queue all of ``items`` or none of them.

        Raises:
            TooManyInputs: more items than ``max_queue``: they could never fit.
            WorkerOverloaded: the queue has no room for all of them now.
        """
        self._check_room(len(items))
        self._queue.extend(items)
        if self._changed is not None:
            self._changed.set()

    def reserve(self) -> None:
        """Hold one slot for a stream until ``release()``.

        Raises:
            WorkerOverloaded: the queue is full.
        """
        self._check_room(1)
        self.reserved += 1

    def release(self) -> None:
        """Give back a slot taken by ``reserve()``."""
        self.reserved = max(0, self.reserved - 1)

    def discard(self, items: Sequence[QueuedItem]) -> int:
        """Take ``items`` out of the queue now (their caller left); return how many were queued.

        Each one removed goes to ``on_drop``, as if a poll had found it dead.
        """
        if not items or not self._queue:
            return 0
        gone = {id(item) for item in items}
        removed = [item for item in self._queue if id(item) in gone]
        if not removed:
            return 0
        self._queue = deque(item for item in self._queue if id(item) not in gone)
        if self._on_drop is not None:
            now = self._clock()
            for item in removed:
                self._on_drop(item, now)
        return len(removed)

    def drop_dead(self, now: float) -> int:
        """Remove cancelled and expired items anywhere in the queue; return how many."""
        if not any(item.is_dead(now) for item in self._queue):
            return 0
        alive: deque[QueuedItem] = deque()
        dropped = 0
        for item in self._queue:
            if item.is_dead(now):
                dropped += 1
                if self._on_drop is not None:
                    self._on_drop(item, now)
            else:
                alive.append(item)
        self._queue = alive
        return dropped

    def poll(self, now: float) -> list[QueuedItem] | None:
        """The next batch if one is due at ``now``, else None.

        A batch is due when ``max_batch_size`` live items wait, or when the oldest has
        waited ``max_wait``. Dead items are removed first and never handed out.
        """
        self.drop_dead(now)
        if not self._queue:
            return None
        size = max(1, self.max_batch_size)
        queue = self._queue
        if len(queue) < size and now < queue[0].enqueued_at + self._max_wait_s:
            return None
        n = min(size, len(queue))
        if not any(item.priority for item in queue):
            return [queue.popleft() for _ in range(n)]
        # Batch-class work waits: interactive items first, then the oldest batch ones.
        order = sorted(range(len(queue)), key=lambda i: queue[i].priority)[:n]
        taken = set(order)
        batch = [queue[i] for i in sorted(order, key=lambda i: (queue[i].priority, i))]
        self._queue = deque(item for i, item in enumerate(queue) if i not in taken)
        return batch

    def due_at(self) -> float | None:
        """When the forming batch will be due at the latest (None when the queue is empty)."""
        if not self._queue:
            return None
        return self._queue[0].enqueued_at + self._max_wait_s

    def next_wakeup(self) -> float | None:
        """The earliest time ``poll`` may answer differently without new items arriving."""
        times = [t for t in (self.due_at(),) if t is not None]
        times += [i.deadline for i in self._queue if i.deadline is not None]
        return min(times) if times else None

    async def next_batch(self) -> list[QueuedItem]:
        """Wait for the next due batch (only one task may call this at a time)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        while True:
            self._changed.clear()
            now = self._clock()
            batch = self.poll(now)
            if batch:
                return batch
            wake = self.next_wakeup()
            if wake is None:
                await self._changed.wait()
                continue
            try:
                async with asyncio.timeout(max(0.0, wake - now)):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def notify(self) -> None:
        """Wake ``next_batch`` (after a caller cancelled an item, say)."""
        if self._changed is not None:
            self._changed.set()

    def drain_all(self) -> list[QueuedItem]:
        """Remove and return every queued item (used when the worker stops hard)."""
        items = list(self._queue)
        self._queue.clear()
        return items
