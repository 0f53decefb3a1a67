"""An adaptive concurrency limit from latency (for upstreams that do not say their own).

As Netflix's concurrency-limits (Gradient2) and Envoy's adaptive concurrency: the limit
grows while the time to first byte stays near the best seen, and shrinks in proportion
when it rises (requests queue inside the server). ``gradient = TOLERANCE × best /
recent``, clamped to [0.5, 1]; ``new = limit × gradient + √limit``; the limit moves a
fifth of the way there per sample, and only grows while it is being used.
"""

from __future__ import annotations

import math
from typing import Final

#: Latency may rise this much over the best before the limit shrinks.
TOLERANCE: Final = 2.0
#: Weight of a sample in the recent latency; growth per sample of the best.
SHORT_ALPHA: Final = 0.2
BEST_DRIFT: Final = 1.002


class GradientLimit:
    """A concurrency limit that follows latency."""

    __slots__ = ("best", "limit", "max_limit", "min_limit", "recent")

    def __init__(self, initial: int, *, min_limit: int = 1, max_limit: int = 1024) -> None:
        self.limit = float(initial)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.best = 0.0
        self.recent = 0.0

    def sample(self, latency_s: float, in_flight: int) -> int:
        """Take one latency measured with ``in_flight`` requests out; the new limit."""
        if self.best == 0.0:
            self.best = self.recent = latency_s
        # The best drifts up slowly, so a server that got slower for good is relearned.
        self.best = min(latency_s, self.best * BEST_DRIFT)
        self.recent += SHORT_ALPHA * (latency_s - self.recent)
        gradient = max(0.5, min(1.0, TOLERANCE * self.best / max(self.recent, 1e-9)))
        if gradient >= 1.0 and in_flight < self.limit / 2:
            return int(self.limit)  # not using what it has: no case for more
        # Headroom (√limit) only while latency holds: when it rises, the limit shrinks.
        target = self.limit * gradient + (math.sqrt(self.limit) if gradient >= 1.0 else 0.0)
        self.limit += 0.2 * (target - self.limit)
        self.limit = max(float(self.min_limit), min(float(self.max_limit), self.limit))
        return int(self.limit)
