"""The one percentile definition (nearest rank), pinned on small cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpufleet._percentile import percentile, percentile_ms


def test_p50_of_two_is_the_lower() -> None:
    assert percentile([1.0, 2.0], 0.5) == 1.0
    assert percentile([1.0, 2.0], 0.51) == 2.0


def test_pinned_values() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.9) == 90.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0
    # Binary fractions: 0.035 * 200 is 7.000000000000001, still rank 7.
    assert percentile([float(v) for v in range(1, 201)], 0.035) == 7.0


def test_empty_gives_the_stated_value() -> None:
    assert percentile([], 0.5) == 0.0
    assert math.isnan(percentile([], 0.5, empty=math.nan))
    assert percentile_ms([], 0.99) == 0.0


def test_milliseconds_round_to_three_places() -> None:
    assert percentile_ms([0.001, 0.0123456], 0.99) == 12.346


@pytest.mark.parametrize("q", [-0.1, 1.5, 50, 99])
def test_a_percentage_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        percentile([1.0], q)


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.floats(0.0, 1.0),
)
def test_it_is_an_observed_value_with_a_q_share_at_or_below(values: list[float], q: float) -> None:
    values.sort()
    p = percentile(values, q)
    assert p in values
    at_or_below = sum(1 for v in values if v <= p)
    assert at_or_below >= round(q * len(values), 9)
    # The smallest such value: one rank lower holds less than a q share.
    below = sum(1 for v in values if v < p)
    assert below < max(1, round(q * len(values), 9))
