"""Batches the fleet keeps, below interactive traffic (issue 16; a script, not a test).

Run (about two minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/batch_priority.py --json /tmp/batch.json

Real processes on 127.0.0.1: ``--workers`` ``synthetic`` workers (``--base-ms`` per batch
plus ``--per-item-ms`` per item, batches of ``--max-batch``) behind ``gpufleet router
--batch-store DIR``. Three phases on the same fleet, in this order:

1. ``idle``: interactive requests alone, a closed loop of ``--interactive`` callers for
   ``--seconds``: p50/p99 latency.
2. ``batch``: a Batch API batch of ``--batch`` ``/predict`` lines (created with the
   ``openai`` client), and while it runs the same interactive loop: its p50/p99, and the
   batch's throughput (lines / time from create to ``completed``).
3. ``generate``: the same number of prompts through ``gpufleet.Client`` (what ``gpufleet
   generate`` runs) on the idle fleet: its throughput.

Targets (issue 16): interactive p99 during the batch within 1.3x of idle; batch
throughput at least 0.9x of ``generate`` alone. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai

from gpufleet import Client
from gpufleet.testing import ServerProcess, run_router, run_worker


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


async def interactive(url: str, callers: int, seconds: float) -> list[float]:
    """Closed loop of ``callers`` interactive /predict requests for ``seconds``."""
    latencies: list[float] = []
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def caller(k: int) -> None:
            i = 0
            while time.monotonic() < end:
                started = time.monotonic()
                async with session.post(url + "/predict", json={"input": f"i{k}-{i}"}) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.monotonic() - started)
                i += 1

        await asyncio.gather(*(caller(k) for k in range(callers)))
    return latencies


def run_batch(router: ServerProcess, n: int) -> tuple[str, float]:
    """Create a batch of ``n`` lines; its id and when it was created (monotonic)."""
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    lines = "\n".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/predict",
                    "body": {"input": f"b{i}"}})
        for i in range(n)
    )  # fmt: skip
    file = client.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
    started = time.monotonic()
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/predict", completion_window="24h"
    )  # type: ignore[arg-type]
    return batch.id, started


def wait_batch(router: ServerProcess, batch_id: str) -> float:
    """Block until the batch completes; the monotonic time it was seen completed."""
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            assert batch.status == "completed", batch
            assert batch.request_counts is not None
            assert batch.request_counts.completed == batch.request_counts.total, batch
            return time.monotonic()
        time.sleep(0.05)


async def generate(url: str, n: int) -> float:
    """``n`` prompts through ``gpufleet.Client``; items per second."""
    started = time.monotonic()
    async with Client(url) as client:
        results = [r async for r in client.stream([f"g{i}" for i in range(n)])]
    took = time.monotonic() - started
    assert len(results) == n
    return n / took


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    worker_args = (
        "--model-arg", f"base_ms={args.base_ms}", "--model-arg", f"per_item_ms={args.per_item_ms}",
        "--max-batch-size", str(args.max_batch),
    )  # fmt: skip
    out: dict[str, Any] = {"args": vars(args), "load_avg_start": os.getloadavg()[0]}
    store = Path(tempfile.mkdtemp(prefix="gpufleet-batch-bench-"))
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(run_worker("synthetic", *worker_args)) for _ in range(args.workers)
        ]
        router = stack.enter_context(
            run_router([w.url for w in workers], "--batch-store", str(store))
        )
        await interactive(router.url, args.interactive, 2.0)  # warm-up: rates, caps
        idle = await interactive(router.url, args.interactive, args.seconds)
        batch_id, created = await asyncio.to_thread(run_batch, router, args.batch)
        waiter = asyncio.create_task(asyncio.to_thread(wait_batch, router, batch_id))
        during = await interactive(router.url, args.interactive, args.seconds)
        done_at = await waiter
        batch_rate = args.batch / (done_at - created)
        gen_rate = await generate(router.url, args.batch)
    out.update(
        idle={"n": len(idle), "p50_ms": _pct(idle, 0.5), "p99_ms": _pct(idle, 0.99),
              "mean_ms": statistics.fmean(idle) * 1000},
        during={"n": len(during), "p50_ms": _pct(during, 0.5), "p99_ms": _pct(during, 0.99),
                "mean_ms": statistics.fmean(during) * 1000},
        batch_rate=batch_rate,
        generate_rate=gen_rate,
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--base-ms", type=float, default=20.0)
    parser.add_argument("--per-item-ms", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--interactive", type=int, default=2, help="interactive callers")
    parser.add_argument("--seconds", type=float, default=10.0, help="each interactive phase")
    parser.add_argument("--batch", type=int, default=5000, help="lines in the batch")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    idle, during = out["idle"], out["during"]
    print(f"load average at start: {out['load_avg_start']:.2f}")
    print("| phase | interactive requests | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| idle fleet | {idle['n']} | {idle['p50_ms']:.1f} | {idle['p99_ms']:.1f} |")
    print(f"| while the batch runs | {during['n']} | {during['p50_ms']:.1f} | "
          f"{during['p99_ms']:.1f} |")  # fmt: skip
    print()
    print(f"- interactive p99 during / idle: **{during['p99_ms'] / idle['p99_ms']:.2f}** "
          "(target <= 1.3)")  # fmt: skip
    print(f"- batch {out['batch_rate']:.0f} lines/s vs Client (generate) alone "
          f"{out['generate_rate']:.0f} items/s: **{out['batch_rate'] / out['generate_rate']:.2f}** "
          "(target >= 0.9)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
