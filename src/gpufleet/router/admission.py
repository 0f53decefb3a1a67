"""Admission: hand each request an upstream slot, or make it wait in one bounded FIFO.

The fast path (nobody waiting, the policy picks an upstream with room) costs one policy
call and no allocation. Otherwise the request waits in its pool's FIFO: every released
slot, state change or hold timer runs ``_dispatch``, which serves the queue head first.
Past ``max_queue`` waiting requests a new one is refused at once, and no request waits
longer than ``queue_timeout_s`` (or its own deadline). With no ready upstream at all,
requests fail at once rather than hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence

from gpufleet.errors import AdmissionRejected, NoHealthyBackend, UpstreamTimeout
from gpufleet.router.policies import Policy
from gpufleet.router.pool import Pool
from gpufleet.router.upstream import Upstream


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
    """The admission queue and dispatch of one pool."""

    def __init__(
        self,
        pool: Pool,
        policy: Policy,
        *,
        max_queue: int,
        queue_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._clock = clock
        self._queue: deque[_Waiter] = deque()
        #: The policy routes by prompt: the proxy reads prompts for this pool.
        self.uses_prompt: bool = getattr(policy, "uses_prompt", False)
        self._timer: asyncio.TimerHandle | None = None
        #: Requests refused because the queue was full or their wait ran out.
        self.rejected = 0
        self.timed_out = 0

    @property
    def depth(self) -> int:
        """Requests waiting now."""
        return len(self._queue)

    def _candidates(self, exclude: Collection[str]) -> list[Upstream]:
        ready = self.pool.ready
        if exclude:
            return [u for u in ready if u.id not in exclude]
        return ready

    async def acquire(
        self,
        key: str | None,
        exclude: Collection[str],
        deadline: float,
        prompt: Sequence[int] | None = None,
    ) -> Upstream:
        """An upstream with one in-flight slot taken for this request.

        Raises:
            NoHealthyBackend: no ready upstream (besides ``exclude``) exists.
            AdmissionRejected: the queue is full, or the wait passed ``queue_timeout_s``.
            UpstreamTimeout: the request's deadline passed while it waited.
        """
        if not self._queue:
            ready = self._candidates(exclude)
            if not ready:
                raise NoHealthyBackend(f"no ready upstream in pool {self.pool.name!r}")
            choice = self.policy.choose(ready, key, 1, 0.0, prompt)
            if isinstance(choice, Upstream):
                choice.take()
                return choice
        elif not self._candidates(exclude):
            raise NoHealthyBackend(f"no ready upstream in pool {self.pool.name!r}")
        if len(self._queue) >= self.max_queue:
            self.rejected += 1
            raise AdmissionRejected(f"admission queue of pool {self.pool.name!r} is full")
        now = self._clock()
        fut: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(fut, key, exclude, now, prompt)
        self._queue.append(waiter)
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
                    self._queue.remove(waiter)
        return got

    def dispatch(self) -> None:
        """Hand free slots to waiting requests, head of the queue first."""
        queue = self._queue
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
            return

    def fail_all(self) -> None:
        """Fail every waiting request at once (the pool has no ready upstream left)."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.fut.done():
                waiter.fut.set_exception(
                    NoHealthyBackend(f"no ready upstream in pool {self.pool.name!r}")
                )

    def close(self) -> None:
        """Stop the hold timer (on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
