"""The stall detector on plain numbers: only pending work with no progress counts."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet import wire
from gpufleet.worker.stall import Stall, find_stall


def _check(now: float, **kw: Any) -> Stall | None:
    args: dict[str, Any] = {
        "timeout_s": 10.0,
        "busy_since": None,
        "last_finished_at": None,
        "oldest_waiting_at": None,
        "waiting": 0,
    }
    return find_stall(now=now, **{**args, **kw})


def test_an_idle_worker_never_stalls() -> None:
    assert _check(1000.0, last_finished_at=1.0) is None
    assert _check(1000.0) is None


def test_a_call_running_past_the_timeout_is_a_stall() -> None:
    assert _check(109.9, busy_since=100.0, last_finished_at=50.0) is None
    stall = _check(
        110.0, busy_since=100.0, last_finished_at=50.0, oldest_waiting_at=101.0, waiting=5
    )
    assert stall == Stall(age_s=10.0, waiting=5)
    assert stall.reason == "device thread has not finished a batch in 10.0s (5 items waiting)"
    assert Stall(63.24, 1).reason.endswith("in 63.2s (1 item waiting)")


def test_the_clock_starts_at_the_last_finished_call_when_work_waited_before_it() -> None:
    # Items queued at 100 behind a batch that finished at 105; the next call began at 105.
    stall = _check(114.0, busy_since=105.0, last_finished_at=105.0, oldest_waiting_at=100.0)
    assert stall is None
    assert _check(115.0, busy_since=105.0, last_finished_at=105.0, oldest_waiting_at=100.0)


def test_items_waiting_with_the_device_idle_count_too() -> None:
    # A batch loop that stopped taking work is as stuck as a wedged device.
    assert _check(120.0, last_finished_at=50.0, oldest_waiting_at=110.0, waiting=2) == Stall(
        10.0, 2
    )


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_zero_turns_the_detector_off(timeout_s: float) -> None:
    assert _check(1e9, timeout_s=timeout_s, busy_since=0.0) is None


def test_the_fleet_reads_the_reason_only_from_a_stalled_body() -> None:
    body = b'{"status": "stalled", "reason": "device thread has not finished a batch in 3.0s"}'
    assert wire.stall_reason(body) == "device thread has not finished a batch in 3.0s"
    assert wire.stall_reason(b'{"status": "stalled"}') == "no reason given"
    for other in (b'{"status": "draining"}', b"[]", b"not json", b"\xff", b""):
        assert wire.stall_reason(other) is None
