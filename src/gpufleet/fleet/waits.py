"""The two ways the supervisor's tasks wait: for the first of several things, and for a change."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def first(*aws: Awaitable[Any], within: float | None = None) -> None:
    """Wait until the first of ``aws`` completes (or ``within`` seconds).

    Coroutines are wrapped in tasks that are cancelled afterwards; futures and tasks
    passed in belong to the caller and are left running.
    """
    tasks = [asyncio.ensure_future(a) for a in aws]
    mine = [t for a, t in zip(aws, tasks, strict=True) if not asyncio.isfuture(a)]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in mine:
            if not t.done():
                t.cancel()
        await asyncio.gather(*mine, return_exceptions=True)


class Changes:
    """A count of changes that several readers follow, each at its own pace.

    ``touch`` is a plain call (a keeper's transition, the supervisor's phase); a reader
    keeps the count it has dealt with and ``wait(seen)`` returns once the count is past
    it. One object instead of an event per reader, each set by every change and cleared
    by its reader.
    """

    def __init__(self) -> None:
        self.count = 0
        self._moved = asyncio.Event()

    def touch(self) -> None:
        """Something a reader may care about changed."""
        self.count += 1
        self._moved.set()
        self._moved = asyncio.Event()

    async def wait(self, seen: int) -> int:
        """Wait until the count is past ``seen``; the count then."""
        while self.count == seen:
            await self._moved.wait()
        return self.count


__all__ = ["Changes", "first"]
