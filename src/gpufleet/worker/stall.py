"""The stall detector: a device thread that has not finished a call for too long while work waits.

``/health`` answering proves only that the event loop runs; a wedged GPU or a deadlocked
kernel leaves the loop free while ``predict`` never returns (issue 12). The runner notes when
the device thread's current call began and when it last finished one, the batcher when its
oldest item arrived; ``find_stall`` compares those with the clock whenever someone asks
(``/health``, ``/stats``, ``/metrics``, a new request). No thread polls, and the check never
waits for the device thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


__all__ = ["Stall", "find_stall"]
