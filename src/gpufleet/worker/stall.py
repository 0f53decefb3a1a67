"""The stall detector: a device thread that has not finished a call for too long while work waits.

``/health`` answering proves only that the event loop runs; a wedged GPU or a deadlocked
kernel leaves the loop free while ``predict`` never returns (issue 12). The runner notes when
the device thread's current call began and when it last finished one, the batcher when its
oldest item arrived; ``find_stall`` compares those with the clock whenever someone asks
(``/health``, ``/stats``, ``/metrics``, a new request). No thread polls, and the check never
waits for the device thread. ``StallWatch`` asks it for a worker and logs and counts
each turn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpufleet.worker.batcher import Batcher
    from gpufleet.worker.metrics import WorkerMetrics
    from gpufleet.worker.runner import Runner
    from gpufleet.worker.stats import WorkerCounters

log = logging.getLogger("gpufleet.worker")


@dataclass(frozen=True, slots=True)
class Stall:
    """The device thread has finished nothing for ``age_s`` seconds while work was pending."""

    age_s: float
    #: Items waiting in the queue (the running batch not counted).
    waiting: int

    @property
    def reason(self) -> str:
        """One line for ``/health``, ``/stats`` and the logs."""
        items = "1 item" if self.waiting == 1 else f"{self.waiting} items"
        return f"device thread has not finished a batch in {self.age_s:.1f}s ({items} waiting)"


def find_stall(
    *,
    now: float,
    timeout_s: float,
    busy_since: float | None,
    last_finished_at: float | None,
    oldest_waiting_at: float | None,
    waiting: int,
) -> Stall | None:
    """A ``Stall`` when work has been pending for ``timeout_s`` with no device call finished.

    Work is pending while a call runs on the device thread (a batch, a stream step) or an
    item waits in the queue; the clock starts at the later of the last finished call and
    the moment that work began, so an idle spell before it does not count. ``timeout_s``
    0 turns the detector off.
    """
    if timeout_s <= 0:
        return None
    pending = [t for t in (busy_since, oldest_waiting_at) if t is not None]
    if not pending:
        return None
    since = max(min(pending), -math.inf if last_finished_at is None else last_finished_at)
    age = now - since
    return Stall(age, waiting) if age >= timeout_s else None


@dataclass(eq=False, slots=True)
class StallWatch:
    """``find_stall`` over a worker's runner and queue, remembering the last answer: each
    turn (stalled, or no longer) is logged once and counted."""

    runner: Runner
    timeout_s: float
    clock: Callable[[], float]
    counters: WorkerCounters
    metrics: WorkerMetrics
    #: The stall seen by the last check (None: making progress, or not checked yet).
    last: Stall | None = None

    def check(self, batcher: Batcher | None) -> Stall | None:
        """The device thread's stall, if it has one now; logs and counts the turns.

        Cheap and on the loop: it reads what the runner and the batcher noted, never waits
        for the device thread. Only a loaded worker (one with a ``batcher``) can stall
        (loading runs on that thread); a draining one still can (a drain does not unwedge
        a device).
        """
        stall = None
        if batcher is not None:
            busy_since = self.runner.busy_since  # before last_finished_at: see Runner
            stall = find_stall(
                now=self.clock(),
                timeout_s=self.timeout_s,
                busy_since=busy_since,
                last_finished_at=self.runner.last_finished_at,
                oldest_waiting_at=batcher.oldest_enqueued_at(),
                waiting=batcher.depth,
            )
        if (stall is None) != (self.last is None):
            if stall is not None:
                self.counters.stalls += 1
                self.metrics.stalls.inc()
                log.warning("stalled: %s (--stall-timeout %gs)", stall.reason, self.timeout_s)
            else:
                log.info("no longer stalled: no call on the device thread is overdue")
            self.metrics.stalled.set(0 if stall is None else 1)
        self.last = stall
        return stall


__all__ = ["Stall", "StallWatch", "find_stall"]
