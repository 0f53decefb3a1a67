"""Counters behind a worker's ``GET /stats`` (see ``gpufleet.wire.WorkerStats``)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ascending values, nearest-rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class WorkerCounters:
    """What the worker counts while it serves; read by /stats and the benchmark."""

    #: Requests answered with a 2xx status.
    served: int = 0
    #: Requests answered with an error other than "queue full" (4xx, 5xx, deadlines).
    errors: int = 0
    #: Requests turned away because the queue was full (503 WorkerOverloaded).
    rejected: int = 0
    #: Items removed before predict because their caller left or their deadline passed.
    dropped: int = 0
    #: Items that ran in a predict call that raised.
    failed_items: int = 0
    batches: int = 0
    batched_items: int = 0
    oom_splits: int = 0
    in_flight: int = 0
    #: Latency (seconds) of the last ``window`` served requests.
    window: int = 2048
    _latencies: deque[float] = field(default_factory=deque)

    def record_latency(self, seconds: float) -> None:
        """Remember the latency of one served request."""
        self._latencies.append(seconds)
        while len(self._latencies) > self.window:
            self._latencies.popleft()

    def record_batch(self, size: int) -> None:
        """Count one predict call of ``size`` items."""
        self.batches += 1
        self.batched_items += size

    @property
    def avg_batch_size(self) -> float:
        """Mean items per predict call since start."""
        return self.batched_items / self.batches if self.batches else 0.0

    def latency_ms(self) -> dict[str, float]:
        """p50 and p99 over the recent window, in milliseconds."""
        values = sorted(self._latencies)
        return {
            "p50": round(percentile(values, 0.50) * 1000, 3),
            "p99": round(percentile(values, 0.99) * 1000, 3),
        }
