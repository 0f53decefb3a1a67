"""The one percentile definition gpufleet reports: nearest rank.

The ``q`` percentile (``q`` a fraction, 0.99 for p99) of ``n`` ascending values is the
value of rank ``ceil(q·n)`` (1-based; rank 1 for ``q = 0``): the smallest observed value
with at least a ``q`` share of the values at or below it. It is always a value that was
measured (a p99 latency someone waited), never a blend of two; p50 of ``[a, b]`` is ``a``,
p100 is the maximum, p0 the minimum. The worker's and the router's ``/stats``, the
router's metrics and dashboard, and ``gpufleet bench`` all use it, so their numbers for
the same samples agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float, *, empty: float = 0.0) -> float:
    """The ``q`` percentile (``0 <= q <= 1``) of ascending values, nearest rank.

    Args:
        sorted_values: the samples, ascending (not checked: sorting is the caller's).
        q: the fraction: 0.5 for the median, 0.99 for p99.
        empty: what an empty sequence gives.

    Raises:
        ValueError: ``q`` outside 0..1 (a percentage such as 99 passed by mistake).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"percentile q must be within 0..1, got {q}")
    n = len(sorted_values)
    if n == 0:
        return empty
    # Rounded first: 0.035 * 200 is 7.000000000000001 in binary, and rank 8 would be wrong.
    rank = max(1, math.ceil(round(q * n, 9)))
    return float(sorted_values[min(rank, n) - 1])


def percentile_ms(sorted_s: Sequence[float], q: float) -> float:
    """The ``q`` percentile of ascending seconds in milliseconds (3 places); 0 when empty."""
    return round(percentile(sorted_s, q) * 1000.0, 3)


__all__ = ["percentile", "percentile_ms"]
