"""Numbers from samples: throughput, latency percentiles, errors by kind, a timeline."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpufleet._percentile import percentile
from gpufleet.operate.load import NOT_SENT, Sample


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
            "p50": percentile(ok_lat, 0.5),
            "p90": percentile(ok_lat, 0.9),
            "p99": percentile(ok_lat, 0.99),
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
    """The run around one moment ``t_s``: answers completed per second, their p50 and p99."""

    t_s: float
    ok_rps: float
    error_rps: float
    p50_ms: float
    p99_ms: float


def _round_step(wanted: float) -> float:
    """The round step (1, 2 or 5 × a power of ten) at or above ``wanted``."""
    exp = 10.0 ** math.floor(math.log10(wanted))
    return next(m * exp for m in (1.0, 2.0, 5.0, 10.0) if m * exp >= wanted * 0.999)


def timeline(
    samples: Sequence[Sample],
    bucket_s: float | None = None,
    *,
    end_s: float | None = None,
    min_answers: int = 25,
) -> list[TimelinePoint]:
    """Completions per second over the run (by completion time), with their latencies.

    One point every ``bucket_s`` (default: about 30 over the run, at least 50 ms apart,
    round steps), at the middle of its step. Each point counts the answers of a window
    around it, wide enough to hold about ``min_answers`` (finer windows only show that
    answers come in batches: 0, 40, 0, 40 …) and at least one step; windows are cut at
    the start and at ``end_s`` (the run's end; default the last completion) and divide by
    what is left of them, so the ends of the run are not drawn low. With ``bucket_s``
    given, the window is the step itself.
    """
    done = [s for s in samples if s.error != NOT_SENT]
    if not done:
        return []
    finished = sorted((s.start_s + s.latency_s, s) for s in done)
    end = max(end_s or 0.0, finished[-1][0])
    per_s = len(done) / end if end > 0 else 0.0
    if bucket_s is None:
        bucket_s = _round_step(max(0.05, end / 30.0))
        window = max(bucket_s, min_answers / per_s if per_s else bucket_s)
    else:
        window = bucket_s
    n = max(1, math.ceil(end / bucket_s - 1e-9))
    times = [t for t, _ in finished]
    out = []
    for b in range(n):
        mid = (b + 0.5) * bucket_s
        lo, hi = max(0.0, mid - window / 2), min(end, mid + window / 2)
        first = bisect.bisect_left(times, lo)
        last = bisect.bisect_right(times, hi) if b == n - 1 else bisect.bisect_left(times, hi)
        inside = [s for _, s in finished[first:last]]
        values = sorted(s.latency_s * 1000.0 for s in inside if s.ok)
        width = max(hi - lo, 1e-9)
        out.append(
            TimelinePoint(
                t_s=min(mid, end),
                ok_rps=len(values) / width,
                error_rps=(len(inside) - len(values)) / width,
                p50_ms=percentile(values, 0.5, empty=math.nan),
                p99_ms=percentile(values, 0.99, empty=math.nan),
            )
        )
    return out
