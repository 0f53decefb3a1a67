"""A worker SIGKILLed under load: no request fails, it is ejected, and it comes back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from gpufleet.testing import ServerProcess, run_router, run_worker
from gpufleet.testing.upstreams import drive
from tests.integration._router import get_json, wait_state, worker_on_port

SYNTHETIC = ("--model-arg", "base_ms=5", "--model-arg", "per_item_ms=1", "--max-batch-size", "8")
HEALTH_S = 0.2


async def test_sigkilled_worker_loses_no_request_is_ejected_and_comes_back() -> None:
    with contextlib.ExitStack() as stack:
        workers: list[ServerProcess] = [
            stack.enter_context(run_worker("synthetic", *SYNTHETIC)) for _ in range(3)
        ]
        router = stack.enter_context(
            run_router(
                [w.url for w in workers],
                "--health-interval",
                str(HEALTH_S),
                "--health-timeout",
                "1",
                "--fail-timeout",
                "1",
            )
        )
        victim = workers[1]
        await wait_state(router.url, victim.url, "ready", within=10)

        load = asyncio.create_task(drive(router.url + "/predict", 1000, 32))
        # Kill it mid-run, once a fair part of the requests are through.
        while (await get_json(router.url + "/stats"))["totals"]["responses"]["2xx"] < 300:
            assert not load.done(), "the run ended before the kill"
            await asyncio.sleep(0.02)
        served_before = (await get_json(router.url + "/stats"))["totals"]["responses"]["2xx"]
        victim.kill()
        killed_at = time.monotonic()
        ejected_after = await wait_state(router.url, victim.url, "ejected", within=10)
        results = await load
        print(f"killed after {served_before} answers; ejected in {ejected_after:.2f}s")

        statuses = Counter(status for status, _, _ in results)
        assert statuses == {200: 1000}, statuses
        assert served_before < 1000, "the kill did not fall inside the run"
        # A few health intervals (3 failed probes eject), with room for a loaded machine.
        assert ejected_after < 15 * HEALTH_S, ejected_after
        stats = await get_json(router.url + "/stats")
        entry = next(w for w in stats["workers"] if w["url"] == victim.url)
        assert entry["in_flight"] == 0
        assert entry["ejections"] >= 1
        assert stats["totals"]["in_flight"] == 0
        assert time.monotonic() - killed_at < 60

        # Restarted on the same port, it is re-admitted by the probes and takes work again.
        restarted = stack.enter_context(worker_on_port(victim.port, "--model", "synthetic"))
        back_after = await wait_state(router.url, restarted.url, "ready", within=20)
        print(f"ready again {back_after:.2f}s after its restart")
        again = await drive(router.url + "/predict", 60, 6)
        assert {status for status, _, _ in again} == {200}
        assert entry["id"] in {upstream for _, upstream, _ in again}
