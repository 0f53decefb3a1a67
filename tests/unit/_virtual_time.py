"""An event loop on virtual time, for async tests that are about time.

``VirtualTimeLoop``'s clock stands still while anything is ready to run and jumps to the
next timer when nothing is (as trio's ``MockClock(autojump_threshold=0)`` and looptime
do): a test of a 5 s timeout takes no wall time, and what it measures with
``loop.time()`` is exact, whatever the machine's load. Real I/O still wakes the loop.
Work handed to a thread with ``run_in_executor`` (``asyncio.to_thread``) holds the
clock: while any is in flight the loop waits for it in real time and no timer fires, as
if the thread's work took no time. A test whose subject is a thread that never returns
sets ``threads_hold_the_clock = False``: the clock then jumps to the next timer while a
thread works. A thread started any other way never holds it.

``on_virtual_time`` turns an ``async def`` test into a plain one that runs it on a fresh
``VirtualTimeLoop`` (closed afterwards, async generators shut down).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without waiting; a wait for a timer moves the loop's clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        assert self.loop is not None
        if (
            self.loop.threads_in_flight and self.loop.threads_hold_the_clock
        ):  # a thread's result will wake the loop: wait for it
            return list(super().select(None))
        if timeout is None:  # no timer: only I/O (or another thread) can wake the loop
            return list(super().select(None))
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` starts at 0 and moves only from timer to timer."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = 0.0
        #: Executor calls not yet answered: the clock stands still until they are.
        self.threads_in_flight = 0
        self.threads_hold_the_clock = True

    def time(self) -> float:
        return self._virtual_now

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_in_flight += 1

        def answered(_: asyncio.Future[T]) -> None:
            self.threads_in_flight -= 1

        future.add_done_callback(answered)
        return future

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead (the selector does, when nothing is ready)."""
        self._virtual_now += seconds


def on_virtual_time(
    test: Callable[[], Coroutine[Any, Any, None]],
) -> Callable[[], None]:
    """Run the ``async def`` test ``test`` on a fresh ``VirtualTimeLoop``."""

    def run() -> None:
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(test())

    run.__name__ = test.__name__
    run.__qualname__ = test.__qualname__
    run.__doc__ = test.__doc__
    run.__module__ = test.__module__
    return run
