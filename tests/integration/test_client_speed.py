"""Pull-based dispatch over mixed-speed endpoints: near the ideal, and beats round-robin.

Three ``synthetic`` workers with speeds 1, 1 and 0.25, one item per batch
(``--max-batch-size 1``), so each serves one item at a time and its capacity is
``speed / service time``: 19.2, 19.2 and 4.8 items/s with a 52 ms service time.
The ideal wall time of N items is N over the summed capacity; the slow worker's fair
share is 4.8 / 43.3, about 1/9.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from gpufleet import Client
from gpufleet.client import Result
from gpufleet.testing import run_worker

SPEEDS = (1.0, 1.0, 0.25)
BASE_MS, PER_ITEM_MS = 50, 2
N_ITEMS = 200


def _worker_args(speed: float) -> list[str]:
    pairs = (f"base_ms={BASE_MS}", f"per_item_ms={PER_ITEM_MS}", f"speed={speed}")
    return [*(a for p in pairs for a in ("--model-arg", p)), "--max-batch-size", "1"]


async def _job(urls: list[str], dispatch: str) -> tuple[float, list[Result], list[int]]:
    async with Client(urls, seed=1000, dispatch=dispatch) as client:
        start = time.monotonic()
        results = await client.run(range(N_ITEMS))
        wall = time.monotonic() - start
        return wall, results, [ep.served for ep in client.endpoints]


def test_pull_dispatch_is_near_ideal_and_beats_round_robin() -> None:
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(run_worker("synthetic", *_worker_args(s))) for s in SPEEDS]
        urls = [w.url for w in workers]
        pull_wall, pull_results, pull_served = asyncio.run(_job(urls, "pull"))
        rr_wall, rr_results, rr_served = asyncio.run(_job(urls, "round-robin"))

    capacity = sum(speed * 1000 / (BASE_MS + PER_ITEM_MS) for speed in SPEEDS)
    ideal = N_ITEMS / capacity
    report = (
        f"pull {pull_wall:.2f}s served {pull_served}; round-robin {rr_wall:.2f}s "
        f"served {rr_served}; ideal {ideal:.2f}s"
    )
    print(report)  # the measured figures, visible with pytest -s
    assert all(r.ok for r in pull_results), report
    assert all(r.ok for r in rr_results), report
    assert [r.seed for r in pull_results] == [1000 + i for i in range(N_ITEMS)]
    # Every item was answered by the process that served it, once.
    assert sorted(r.output["echo"] for r in pull_results) == list(range(N_ITEMS))
    slow_share = pull_served[2] / N_ITEMS
    assert 0.06 <= slow_share <= 0.15, report  # about 1/9
    assert pull_wall <= 1.15 * ideal, report
    assert rr_served == [67, 67, 66], report
    assert rr_wall >= 1.5 * pull_wall, report
