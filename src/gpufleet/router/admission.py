"""Admission: hand each request an upstream slot, or make it wait in one bounded FIFO.

The fast path (nobody waiting, the policy picks an upstream with room) costs one policy
call and no allocation. Otherwise the request waits in its pool's FIFO: every released
slot, state change or hold timer runs ``_dispatch``, which serves the queue head first.
Past ``max_queue`` waiting requests a new one is refused at once, and no request waits
longer than ``queue_timeout_s`` (or its own deadline). With no ready upstream at all,
requests fail at once rather than hang.

Two priority classes share the pool (``X-Gpufleet-Priority``). ``interactive`` (the
default) is served first: its fast path ignores waiting batch requests, and no batch
request is dispatched while an interactive one waits. ``batch`` fills what is left, and
only up to ``batch_share`` of each upstream's cap (at least one slot), so the rest of the
cap stays free for interactive bursts. Each class has its own FIFO, depth and wait times.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Final

from gpufleet.errors import AdmissionRejected, NoHealthyBackend, UpstreamTimeout
from gpufleet.router.policies import Policy
from gpufleet.router.pool import Pool
from gpufleet.router.upstream import Upstream

INTERACTIVE: Final = "interactive"
BATCH: Final = "batch"
#: The priority classes, most urgent first (values of ``X-Gpufleet-Priority``).
PRIORITIES: Final = (INTERACTIVE, BATCH)
#: Recent waits kept per class for the p50/p99 in ``/stats``.
WAIT_WINDOW: Final = 1024


class ClassStats:
    """What one priority class of a pool went through: admitted requests and their waits."""

    __slots__ = ("admitted", "wait_total_s", "waits")

    def __init__(self) -> None:
        #: Requests that got a slot (fast path or after waiting).
        self.admitted = 0
        #: Seconds waited in the queue, summed over admitted requests.
        self.wait_total_s = 0.0
        #: The last ``WAIT_WINDOW`` waits (seconds; 0.0 for the fast path).
        self.waits: deque[float] = deque(maxlen=WAIT_WINDOW)

    def note(self, wait_s: float) -> None:
        """Count one admitted request that waited ``wait_s``."""
        self.admitted += 1
        self.wait_total_s += wait_s
        self.waits.append(wait_s)


class _Waiter:
    __slots__ = ("enqueued", "exclude", "fut", "key", "prompt")

    def __init__(
        self,
        fut: asyncio.Future[Upstream],
        key: str | None,
        exclude: Collection[str],
        t: float,
        prompt: Sequence[int] | None,
    ) -> None:
        self.fut = fut
        self.key = key
        self.exclude = exclude
        self.enqueued = t
        self.prompt = prompt


class Admission:
    """The admission queue and dispatch of one pool.

    ``clock`` is the only time it reads (the clock of the deadlines it is given, monotonic);
    its waits are the running loop's timers, so a test on a virtual loop passes its ``time``.
    """

    def __init__(
        self,
        pool: Pool,
        policy: Policy,
        *,
        max_queue: int,
        queue_timeout_s: float,
        batch_share: float = 0.75,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        #: Share of each upstream's cap that batch requests may hold (at least one slot).
        self.batch_share = batch_share
        self._clock = clock
        #: Interactive requests waiting, oldest first; then batch requests.
        self._queue: deque[_Waiter] = deque()
        self._batch: deque[_Waiter] = deque()
        self.classes: dict[str, ClassStats] = {p: ClassStats() for p in PRIORITIES}
        #: The policy routes by prompt: the proxy reads prompts for this pool.
        self.uses_prompt: bool = getattr(policy, "uses_prompt", False)
        self._timer: asyncio.TimerHandle | None = None
        #: Requests refused because the queue was full or their wait ran out.
        self.rejected = 0
        self.timed_out = 0

    @property
    def depth(self) -> int:
        """Requests waiting now (both classes)."""
        return len(self._queue) + len(self._batch)

    def depth_of(self, priority: str) -> int:
        """Requests of ``priority`` waiting now."""
        return len(self._batch) if priority == BATCH else len(self._queue)

    def batch_cap(self, upstream: Upstream) -> int:
        """How many of ``upstream``'s slots batch requests may hold."""
        return max(1, math.floor(upstream.max_outstanding * self.batch_share))

    def _candidates(self, exclude: Collection[str]) -> list[Upstream]:
        ready = self.pool.ready
        if exclude:
            return [u for u in ready if u.id not in exclude]
        return ready

    def _batch_room(self, ready: list[Upstream]) -> list[Upstream]:
        """The upstreams of ``ready`` below their batch share."""
        return [u for u in ready if u.in_flight < self.batch_cap(u)]

    async def acquire(
        self,
        key: str | None,
        exclude: Collection[str],
        deadline: float,
        prompt: Sequence[int] | None = None,
        priority: str = INTERACTIVE,
    ) -> Upstream:
        """An upstream with one in-flight slot taken for this request.

        ``priority`` is ``INTERACTIVE`` or ``BATCH`` (see the module's docstring).

        Raises:
            NoHealthyBackend: no ready upstream (besides ``exclude``) exists.
            AdmissionRejected: the queue is full, or the wait passed ``queue_timeout_s``.
            UpstreamTimeout: the request's deadline passed while it waited.
        """
        batch = priority == BATCH
        queue = self._batch if batch else self._queue
        # A batch request takes the fast path only when nobody at all waits.
        if not self._queue and not (batch and self._batch):
            ready = self._candidates(exclude)
            if not ready:
                raise NoHealthyBackend(f"no ready upstream in pool {self.pool.name!r}")
            room = self._batch_room(ready) if batch else ready
            choice = self.policy.choose(room, key, 1, 0.0, prompt) if room else None
            if isinstance(choice, Upstream):
                choice.take()
                self.classes[priority].note(0.0)
                return choice
        elif not self._candidates(exclude):
            raise NoHealthyBackend(f"no ready upstream in pool {self.pool.name!r}")
        if len(queue) >= self.max_queue:
            self.rejected += 1
            raise AdmissionRejected(f"admission queue of pool {self.pool.name!r} is full")
        now = self._clock()
        fut: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(fut, key, exclude, now, prompt)
        queue.append(waiter)
        self.dispatch()
        wait_s = min(self.queue_timeout_s, deadline - now)
        got: Upstream | None = None
        try:
            async with asyncio.timeout(wait_s):
                got = await fut
        except TimeoutError:
            if got is not None:  # the slot arrived in the very tick the timer fired
                return got
            self.timed_out += 1
            if wait_s < self.queue_timeout_s:
                raise UpstreamTimeout("deadline passed while waiting for an upstream") from None
            raise AdmissionRejected(
                f"no upstream had room within {self.queue_timeout_s:g}s"
            ) from None
        finally:
            if got is None:
                # Cancelled or timed out: a slot handed over in the same tick is not lost.
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    fut.result().give_back(None)
                    self.dispatch()
                elif not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            else:
                self.classes[priority].note(self._clock() - now)
        return got

    def dispatch(self) -> None:
        """Hand free slots to waiting requests: interactive ones first, then batch ones."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Batch requests only once no interactive request waits (it may be held or
        # waiting for room: either way what frees up is its own first).
        if self._serve(self._queue, batch=False):
            self._serve(self._batch, batch=True)

    def _serve(self, queue: deque[_Waiter], *, batch: bool) -> bool:
        """Serve ``queue`` from its head; True when it was emptied."""
        while queue:
            waiter = queue[0]
            if waiter.fut.done():
                queue.popleft()
                continue
            ready = self._candidates(waiter.exclude)
            if not ready:
                queue.popleft()
                waiter.fut.set_exception(
                    NoHealthyBackend(f"no ready upstream in pool {self.pool.name!r}")
                )
                continue
            if batch:
                ready = self._batch_room(ready)
                if not ready:
                    return False  # a slot given back under the share wakes it
            choice = self.policy.choose(
                ready, waiter.key, len(queue), self._clock() - waiter.enqueued, waiter.prompt
            )
            if isinstance(choice, Upstream):
                queue.popleft()
                choice.take()
                waiter.fut.set_result(choice)
                continue
            if isinstance(choice, float):
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(choice, self.dispatch)
            return False
        return True

    def fail_all(self) -> None:
        """Fail every waiting request at once (the pool has no ready upstream left)."""
        for queue in (self._queue, self._batch):
            while queue:
                waiter = queue.popleft()
                if not waiter.fut.done():
                    waiter.fut.set_exception(
                        NoHealthyBackend(f"no ready upstream in pool {self.pool.name!r}")
                    )

    def close(self) -> None:
        """Stop the hold timer (on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
