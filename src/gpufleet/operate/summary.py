"""Numbers from samples: throughput, latency percentiles, errors by kind, a timeline."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpufleet.operate.load import NOT_SENT, Sample


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, interpolated linearly."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """What one load run did: counts, throughput and the latency of successful requests."""

    sent: int
    ok: int
    failed: int
    duration_s: float
    #: Successful answers per second of wall time.
    throughput_rps: float
    #: p50, p90, p99, max, mean and min in milliseconds (successful requests only).
    latency_ms: dict[str, float]
    errors: dict[str, int] = field(default_factory=dict)
    not_sent: int = 0

    @property
    def error_rate(self) -> float:
        return self.failed / self.sent if self.sent else 0.0


def summarize(samples: Sequence[Sample], duration_s: float) -> LoadSummary:
    """Summarize a run's samples over its wall time ``duration_s``."""
    not_sent = sum(1 for s in samples if s.error == NOT_SENT)
    sent = len(samples) - not_sent
    ok_lat = sorted(s.latency_s * 1000.0 for s in samples if s.ok)
    errors = Counter(s.error for s in samples if s.error is not None and s.error != NOT_SENT)
    latency: dict[str, float] = {}
    if ok_lat:
        latency = {
            "p50": percentile(ok_lat, 50),
            "p90": percentile(ok_lat, 90),
            "p99": percentile(ok_lat, 99),
            "max": ok_lat[-1],
            "mean": sum(ok_lat) / len(ok_lat),
            "min": ok_lat[0],
        }
    return LoadSummary(
        sent=sent,
        ok=len(ok_lat),
        failed=sent - len(ok_lat),
        duration_s=duration_s,
        throughput_rps=len(ok_lat) / duration_s if duration_s > 0 else 0.0,
        latency_ms=latency,
        errors=dict(errors.most_common()),
        not_sent=not_sent,
    )


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One time bucket: when it starts, answers completed per second, their p50 and p99."""

    t_s: float
    ok_rps: float
    error_rps: float
    p50_ms: float
    p99_ms: float


def timeline(samples: Sequence[Sample], bucket_s: float | None = None) -> list[TimelinePoint]:
    """Completions per bucket of time (by completion time), with the bucket's latencies."""
    done = [s for s in samples if s.error != NOT_SENT]
    if not done:
        return []
    end = max(s.start_s + s.latency_s for s in done)
    if bucket_s is None:
        # About 60 buckets over the run, in round steps, never finer than 50 ms.
        bucket_s = max(0.05, end / 60.0)
        bucket_s = float(f"{bucket_s:.1g}")
    n = max(1, math.ceil(end / bucket_s))
    lat: list[list[float]] = [[] for _ in range(n)]
    errs = [0] * n
    for s in done:
        b = min(n - 1, int((s.start_s + s.latency_s) / bucket_s))
        if s.ok:
            lat[b].append(s.latency_s * 1000.0)
        else:
            errs[b] += 1
    out = []
    for b in range(n):
        values = sorted(lat[b])
        out.append(
            TimelinePoint(
                t_s=b * bucket_s,
                ok_rps=len(values) / bucket_s,
                error_rps=errs[b] / bucket_s,
                p50_ms=percentile(values, 50) if values else math.nan,
                p99_ms=percentile(values, 99) if values else math.nan,
            )
        )
    return out
