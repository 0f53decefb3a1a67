"""One upstream server: its state, the router's own in-flight count, and its measured rate.

In-flight counts are taken at dispatch (``take``) and given back exactly once
(``give_back``); both are plain synchronous calls, so no ``await`` can fall between a
check and its update and cancellation can never leave a count behind.

Time bounds are learned per upstream from its time to first answer byte (TTFB): an
attempt waits at most ``first_byte_timeout_s`` for its answer to begin (10 × the p99
TTFB, at least 1 s, unless ``--first-byte-timeout`` fixes it), and an upstream whose
oldest attempt still waiting for its answer is older than ``busy_after_s`` (4 × p99, at
least 0.5 s) takes no new work: a request stuck on it (a 10 s job, a wedged device) does
not make new requests queue behind it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from gpufleet.router.limit import GradientLimit

if TYPE_CHECKING:
    from gpufleet.router.tokens import TokenCounts

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
#: The learned first-byte timeout: this multiple of the p99 TTFB, never below the floor.
FIRST_BYTE_FACTOR: Final = 10.0
FIRST_BYTE_FLOOR_S: Final = 1.0
#: An upstream is busy for new work when its oldest waiting attempt is this much past p99.
BUSY_FACTOR: Final = 4.0
BUSY_FLOOR_S: Final = 0.5
#: TTFB samples kept, needed before anything is learned, and between two recomputations.
TTFB_WINDOW: Final = 512
TTFB_MIN_SAMPLES: Final = 20
TTFB_EVERY: Final = 16


class Abandoned(Exception):
    """The upstream was found dead (failed probes) while this attempt waited for it."""


class Waiting(Protocol):
    """An attempt waiting for its answer to begin (``http1.Response``)."""

    def fail(self, exc: BaseException) -> None:
        """Give up on the answer with ``exc``."""


class Upstream:
    """An upstream server as the router sees it (one per ``--worker`` or admin add)."""

    __slots__ = (
        "_busy_acc",
        "_busy_since",
        "_clock",
        "_done",
        "_ttfb_new",
        "base",
        "busy_after_s",
        "cap_from_stats",
        "consecutive_fails",
        "consecutive_oks",
        "ejected_until",
        "ejections",
        "engine",
        "engine_load",
        "errors",
        "fail_times",
        "first_byte_timeout_s",
        "fixed_first_byte_s",
        "id",
        "in_flight",
        "is_gpufleet",
        "labels",
        "latencies",
        "limiter",
        "max_outstanding",
        "pool",
        "rate",
        "refused_cap",
        "refused_until",
        "served",
        "state",
        "stuck_until",
        "suspect",
        "tokens",
        "ttfb",
        "url",
        "waiting",
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
        first_byte_timeout_s: float = 0.0,
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
        #: What kind of server it is ("sglang", "tgi", "vllm", "http"; see engines.py).
        self.engine = ""
        #: The engine's own (running, waiting, monotonic time of the read), if it says.
        self.engine_load: tuple[int, int, float] | None = None
        #: Adapts ``max_outstanding`` from latency (servers that say nothing of it).
        self.limiter: GradientLimit | None = None
        #: LLM tokens in and out, TTFT and inter-token latency (made on the first answer).
        self.tokens: TokenCounts | None = None
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
        #: Attempts sent here whose answer has not begun, oldest first, with their start.
        self.waiting: dict[Waiting, float] = {}
        #: Recent times to first answer byte (seconds).
        self.ttfb: deque[float] = deque(maxlen=TTFB_WINDOW)
        #: ``--first-byte-timeout`` (0: learn it from ``ttfb``).
        self.fixed_first_byte_s = first_byte_timeout_s
        #: How long an attempt waits for its answer to begin (inf until learned).
        self.first_byte_timeout_s = first_byte_timeout_s or math.inf
        #: Oldest waiting attempt older than this: no new work (inf until learned).
        self.busy_after_s = first_byte_timeout_s / 2 if first_byte_timeout_s else math.inf
        #: After a "not started" refusal (queue full, 429): at most ``refused_cap`` in
        #: flight until ``refused_until`` (monotonic; 0.0 when not in force).
        self.refused_until = 0.0
        self.refused_cap = 0
        #: An attempt timed out here and nothing has answered since (see
        #: ``first_byte_missed``); no new work before ``stuck_until``.
        self.suspect = False
        self.stuck_until = 0.0
        self._clock = clock
        self._busy_since = 0.0
        self._busy_acc = 0.0
        self._done = 0
        self._ttfb_new = 0

    # The hot path -------------------------------------------------------------------

    def has_room(self) -> bool:
        """True when the router may send this upstream one more request."""
        if self.in_flight >= self.max_outstanding:
            return False
        if self.refused_until:
            if self._clock() < self.refused_until:
                if self.in_flight >= self.refused_cap:
                    return False
            else:
                self.refused_until = 0.0
        if self.suspect and (self.waiting or self._clock() < self.stuck_until):
            return False  # one trial at a time (streams already answering do not count)
        return not (self.waiting and self.is_stuck())

    def is_stuck(self) -> bool:
        """True when the oldest attempt still waiting here is past ``busy_after_s``."""
        for started in self.waiting.values():
            return self._clock() - started > self.busy_after_s
        return False

    def token_counts(self) -> TokenCounts:
        """This upstream's LLM token counters (made on first use)."""
        if self.tokens is None:
            from gpufleet.router.tokens import TokenCounts

            self.tokens = TokenCounts()
        return self.tokens

    def abandon_waiting(self, why: str) -> int:
        """Fail every attempt still waiting for its answer here; how many there were."""
        waiting = list(self.waiting)
        self.waiting.clear()
        for attempt in waiting:
            attempt.fail(Abandoned(why))
        return len(waiting)

    def first_byte_missed(self, attempt: Waiting, timeout_s: float) -> bool:
        """``attempt`` got no answer within ``timeout_s``: True when it was only queued.

        It was queued when an older attempt still waits here, or one already timed out
        since the upstream last answered. Otherwise it may be what stuck the upstream.
        Either way the upstream is *suspect*: no new work for ``timeout_s``, then one
        trial request at a time until an answer begins.
        """
        behind = self.suspect
        for oldest in self.waiting:
            behind = behind or oldest is not attempt
            break
        self.suspect = True
        self.stuck_until = self._clock() + timeout_s
        return behind

    def refused(self, retry_after_s: float) -> None:
        """The upstream refused an attempt as full: hold new work off for a while.

        It keeps what it holds now (what it accepted), and gets nothing more until one of
        those ends or ``retry_after_s`` passes.
        """
        self.refused_cap = self.in_flight - 1  # this attempt's slot is being given back
        self.refused_until = self._clock() + retry_after_s

    def note_first_byte(self, ttfb_s: float) -> None:
        """An answer began ``ttfb_s`` after its attempt started: learn the time bounds."""
        self.suspect = False
        if self.limiter is not None:
            self.max_outstanding = self.limiter.sample(ttfb_s, self.in_flight)
        self.ttfb.append(ttfb_s)
        self._ttfb_new += 1
        if self._ttfb_new >= TTFB_EVERY and len(self.ttfb) >= TTFB_MIN_SAMPLES:
            self._ttfb_new = 0
            lat = sorted(self.ttfb)
            p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            fixed = self.fixed_first_byte_s
            learned = max(FIRST_BYTE_FLOOR_S, FIRST_BYTE_FACTOR * p99)
            self.first_byte_timeout_s = fixed or learned
            self.busy_after_s = min(self.first_byte_timeout_s, max(BUSY_FLOOR_S, BUSY_FACTOR * p99))

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
