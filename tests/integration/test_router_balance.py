"""Balance over real ``synthetic`` workers: round-robin is exact, capacity follows speed."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

from gpufleet.testing import ServerProcess, run_router, run_worker
from gpufleet.testing.upstreams import drive
from tests.integration._router import wait_state


@contextlib.contextmanager
def _workers(*speeds: float, base_ms: int, batch: int) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                run_worker(
                    "synthetic",
                    "--model-arg",
                    f"base_ms={base_ms}",
                    "--model-arg",
                    "per_item_ms=0",
                    "--model-arg",
                    f"speed={speed}",
                    "--max-batch-size",
                    str(batch),
                )
            )
            for speed in speeds
        ]


async def test_round_robin_splits_exactly_evenly() -> None:
    with (
        _workers(1, 1, 1, base_ms=5, batch=8) as workers,
        run_router([w.url for w in workers], "--policy", "round-robin") as router,
    ):
        for w in workers:  # the router is healthy once one is ready: wait for all three
            await wait_state(router.url, w.url, "ready", within=10)
        results = await drive(router.url + "/predict", 300, 6)
    assert {status for status, _, _ in results} == {200}
    assert sorted(Counter(up for _, up, _ in results).values()) == [100, 100, 100]


async def _timed(router_url: str) -> tuple[float, Counter[str]]:
    await drive(router_url + "/predict", 30, 12)  # let the router measure each rate
    started = time.perf_counter()
    results = await drive(router_url + "/predict", 300, 12)
    elapsed = time.perf_counter() - started
    assert {status for status, _, _ in results} == {200}
    return elapsed, Counter(up for _, up, _ in results)


async def test_capacity_gives_a_slow_worker_its_share_and_beats_round_robin() -> None:
    # Workers that serve one request at a time (GPU-like): two fast, one 4x slower.
    # A cap of 16 per upstream keeps the caps out of the way, as with a plain balancer.
    with _workers(1, 1, 0.25, base_ms=15, batch=1) as workers:
        urls = [w.url for w in workers]
        with run_router(urls, "--policy", "round-robin", "--max-outstanding", "16") as rr:
            rr_time, rr_counts = await _timed(rr.url)
        with run_router(urls, "--policy", "capacity", "--max-outstanding", "16") as cap:
            cap_time, cap_counts = await _timed(cap.url)
    print(f"round-robin {rr_time:.2f}s {dict(rr_counts)}")
    print(f"capacity {cap_time:.2f}s {dict(cap_counts)}")
    slow = "w2"
    assert rr_counts[slow] == 100
    fast = (cap_counts["w0"] + cap_counts["w1"]) / 2
    # Ideal: a quarter of a fast worker's share (1/9 of the work).
    assert 0.12 < cap_counts[slow] / fast < 0.45, cap_counts
    assert cap_time < 0.8 * rr_time, (cap_time, rr_time)
