"""One upstream server: its state, the router's own in-flight count, and its measured rate.

In-flight counts are taken at dispatch (``take``) and given back exactly once
(``give_back``); both are plain synchronous calls, so no ``await`` can fall between a
check and its update and cancellation can never leave a count behind.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final

READY: Final = "ready"
STARTING: Final = "starting"
EJECTED: Final = "ejected"
DRAINING: Final = "draining"
REMOVED: Final = "removed"

#: Default cap for upstreams that are not gpufleet workers (or before their /stats is read).
DEFAULT_MAX_OUTSTANDING: Final = 4
#: How many recent latencies feed p50/p99.
LATENCY_WINDOW: Final = 1024
#: Weight of a new sample in the service-rate EWMA.
RATE_ALPHA: Final = 0.3
#: Busy seconds (and completions) that make one rate sample.
RATE_SAMPLE_S: Final = 0.25
RATE_SAMPLE_MIN: Final = 2


class Upstream:
    """An upstream server as the router sees it (one per ``--worker`` or admin add)."""

    __slots__ = (
        "_busy_acc",
        "_busy_since",
        "_clock",
        "_done",
        "base",
        "cap_from_stats",
        "consecutive_fails",
        "consecutive_oks",
        "ejected_until",
        "ejections",
        "errors",
        "fail_times",
        "id",
        "in_flight",
        "is_gpufleet",
        "labels",
        "latencies",
        "max_outstanding",
        "pool",
        "rate",
        "served",
        "state",
        "url",
        "weight",
    )

    def __init__(
        self,
        id: str,
        url: str,
        *,
        pool: str = "default",
        weight: float = 1.0,
        max_outstanding: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = id
        self.url = url.rstrip("/")
        #: ``url`` without a trailing slash, ready to prefix a path.
        self.base = self.url
        self.pool = pool
        self.weight = weight
        #: Fixed cap from the command line; 0 means learn it (gpufleet worker) or default.
        self.cap_from_stats = max_outstanding == 0
        self.max_outstanding = max_outstanding or DEFAULT_MAX_OUTSTANDING
        self.state: str = STARTING
        self.is_gpufleet = False
        #: Where it runs, as its launcher says (``node``, ``gpu`` …; set through the admin API).
        self.labels: dict[str, str] = {}
        self.in_flight = 0
        self.served = 0
        self.errors = 0
        self.ejections = 0
        self.consecutive_fails = 0
        self.consecutive_oks = 0
        self.ejected_until = 0.0
        self.fail_times: deque[float] = deque()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        #: Measured service rate in requests/s while busy; 0.0 until measured.
        self.rate = 0.0
        self._clock = clock
        self._busy_since = 0.0
        self._busy_acc = 0.0
        self._done = 0

    # The hot path -------------------------------------------------------------------

    def has_room(self) -> bool:
        """True when the router may send this upstream one more request."""
        return self.in_flight < self.max_outstanding

    def take(self) -> None:
        """Count one request in flight (at dispatch)."""
        if self.in_flight == 0:
            self._busy_since = self._clock()
        self.in_flight += 1

    def give_back(self, latency_s: float | None) -> None:
        """Release one in-flight request; ``latency_s`` is None when it got no answer."""
        self.in_flight -= 1
        if latency_s is None:
            if self.in_flight == 0:
                self._busy_acc += self._clock() - self._busy_since
            return
        self.served += 1
        self.latencies.append(latency_s)
        self._done += 1
        now = self._clock()
        if self.in_flight == 0:
            self._busy_acc += now - self._busy_since
            busy = self._busy_acc
        else:
            busy = self._busy_acc + (now - self._busy_since)
        if busy >= RATE_SAMPLE_S and self._done >= RATE_SAMPLE_MIN:
            sample = self._done / busy
            self.rate = (
                sample if self.rate == 0.0 else self.rate + RATE_ALPHA * (sample - self.rate)
            )
            self._done = 0
            self._busy_acc = 0.0
            self._busy_since = now

    # Health bookkeeping --------------------------------------------------------------

    def record_failure(self, now: float, max_fails: int, window_s: float) -> bool:
        """Note a passive failure; True when it makes ``max_fails`` within ``window_s``."""
        self.errors += 1
        times = self.fail_times
        times.append(now)
        while times and times[0] < now - window_s:
            times.popleft()
        return len(times) >= max_fails

    def is_selectable(self) -> bool:
        """True when new requests may go here (ready, not draining or ejected)."""
        return self.state == READY

    def snapshot(self) -> dict[str, object]:
        """This upstream as a ``/stats`` ``workers`` entry."""
        lat = sorted(self.latencies)
        return {
            "id": self.id,
            "url": self.url,
            "pool": self.pool,
            "state": self.state,
            "in_flight": self.in_flight,
            "served": self.served,
            "errors": self.errors,
            "ejections": self.ejections,
            "latency_ms": {"p50": percentile_ms(lat, 0.50), "p99": percentile_ms(lat, 0.99)},
            "rate": round(self.rate, 3),
            "weight": self.weight,
            "max_outstanding": self.max_outstanding,
            "gpufleet_worker": self.is_gpufleet,
            "labels": dict(self.labels),
        }


def percentile_ms(sorted_s: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of sorted seconds, in milliseconds; 0 when empty."""
    if not sorted_s:
        return 0.0
    idx = min(len(sorted_s) - 1, max(0, round(q * len(sorted_s) + 0.5) - 1))
    return round(sorted_s[idx] * 1000.0, 3)
