"""The worker's /stats counters: latency window and the recent errors it lists."""

from __future__ import annotations

from gpufleet.wire import LatencyMs, RecentError
from gpufleet.worker.stats import RECENT_ERRORS, WorkerCounters


def test_recent_errors_keep_the_last_few_oldest_first() -> None:
    c = WorkerCounters()
    for i in range(RECENT_ERRORS + 5):
        c.record_error("ModelError", f"boom {i}" + "x" * 400, status=500, path="/predict", at=i)
    errors = c.recent_errors()
    assert len(errors) == RECENT_ERRORS
    assert errors[0].message.startswith("boom 5")
    assert errors[-1].message.startswith(f"boom {RECENT_ERRORS + 4}")
    assert len(errors[-1].message) == 300  # a huge message does not bloat /stats
    assert errors[0] == RecentError(
        time="1970-01-01T00:00:05Z",
        error="ModelError",
        message=errors[0].message,
        status=500,
        path="/predict",
    )


def test_latency_percentiles_over_the_window() -> None:
    c = WorkerCounters(window=4)
    for ms in (100, 1, 2, 3, 4):
        c.record_latency(ms / 1000)
    assert c.latency_ms() == LatencyMs(p50=2.0, p99=4.0)  # the 100 ms one left the window
    assert WorkerCounters(window=4).latency_ms() == LatencyMs(p50=0.0, p99=0.0)
