"""The retry budget: retries stay a bounded share of requests, so a full fleet is not hammered.

As Envoy's ``retry_budget``: a retry may start while retries are at most ``percent`` of
the requests seen over the last ``window_s`` seconds, or while fewer than
``min_concurrent`` retries are in flight (so a quiet router can still retry at all).
Counts live in one-second buckets; nothing here allocates per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

#: Seconds of history the share is computed over.
WINDOW_S: Final = 10


class RetryBudget:
    """Decides whether one more retry may start."""

    __slots__ = ("_buckets", "_clock", "_now_s", "active", "min_concurrent", "percent")

    def __init__(
        self,
        percent: float,
        min_concurrent: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.percent = percent
        self.min_concurrent = min_concurrent
        self._clock = clock
        #: ``[requests, retries]`` per second, the current second last.
        self._buckets = [[0, 0] for _ in range(WINDOW_S)]
        self._now_s = int(clock())
        #: Retries under way now (taken by ``try_take``, given back with ``done``).
        self.active = 0

    def _bucket(self) -> list[int]:
        now_s = int(self._clock())
        buckets = self._buckets
        if now_s != self._now_s:
            for _ in range(min(now_s - self._now_s, WINDOW_S)):
                oldest = buckets.pop(0)
                oldest[0] = oldest[1] = 0
                buckets.append(oldest)
            self._now_s = now_s
        return buckets[-1]

    def note_request(self) -> None:
        """Count one request (each request once, whatever its attempts)."""
        self._bucket()[0] += 1

    def try_take(self) -> bool:
        """True (and counted) when a retry may start now; give it back with ``done``."""
        bucket = self._bucket()
        if self.active >= self.min_concurrent:
            requests = sum(b[0] for b in self._buckets)
            retries = sum(b[1] for b in self._buckets)
            if retries + 1 > requests * self.percent / 100.0:
                return False
        bucket[1] += 1
        self.active += 1
        return True

    def done(self) -> None:
        """A retry taken with ``try_take`` has ended."""
        self.active -= 1
