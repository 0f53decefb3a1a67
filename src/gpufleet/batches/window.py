"""``Window``: how many batch requests of one pool are in flight, and how many may be.

Every batch of a pool pulls its next request only when the window has room (the
client's pull-based dispatch, with one shared window instead of a slot task per
endpoint). The limit follows the pool's free batch capacity (``BatchRunner`` sets it from
the ready upstreams' caps as they change), so it grows as workers join or learn larger
caps. Waiters are woken one at a time, in order: a completion never wakes the rest.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Window:
    """A counting limit that can be raised, lowered and paused while requests wait."""

    def __init__(self, limit: int = 1) -> None:
        self.limit = max(1, limit)
        self.in_flight = 0
        self.paused = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return sum(1 for f in self._waiters if not f.done())

    async def take(self) -> None:
        """Wait for room, then hold one place (give it back with ``give``)."""
        if not self.paused and not self._waiters and self.in_flight < self.limit:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()  # handed a place in the same tick it was cancelled
            raise
        finally:
            if not fut.done():
                fut.cancel()

    def give(self) -> None:
        """Give one place back."""
        self.in_flight -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        """Change the limit (places already held above it stay held)."""
        self.limit = max(1, limit)
        self._wake()

    def pause(self) -> None:
        """Hand out no more places (the router drains); those held are given back as usual."""
        self.paused = True

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and not self.paused and self.in_flight < self.limit:
            fut = waiters.popleft()
            if fut.done():
                continue
            self.in_flight += 1
            fut.set_result(None)
        while waiters and waiters[0].done():
            waiters.popleft()
