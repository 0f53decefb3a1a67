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
throughput at least 0.9x of ``generate`` alone. Prints a Markdown table, and where the
time went in each phase: CPU seconds of the router, the workers and this process (from
``/proc``), the workers' device batches (their size), the router's admission wait per
class, the batch's window, and how long the batch took to send vs to finalize.
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


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


class Probe:
    """Counters of the fleet at one moment, to subtract one from another."""

    def __init__(self, router: ServerProcess, workers: list[ServerProcess]) -> None:
        self.router, self.workers = router, workers

    async def take(self) -> dict[str, Any]:
        stats = [await _json(w.url + "/stats") for w in self.workers]
        routed = await _json(self.router.url + "/stats")
        return {
            "t": time.monotonic(),
            "router_cpu_s": _cpu_s(self.router.pid),
            "workers_cpu_s": sum(_cpu_s(w.pid) for w in self.workers),
            "self_cpu_s": sum(os.times()[:2]),
            "served": sum(int(x["served"]) for x in stats),
            "batches": sum(int(x["batches"]) for x in stats),
            "classes": routed["pools"]["default"]["classes"],
            "window": routed.get("batches", {}).get("windows", {}).get("default"),
        }


def phase(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two probes."""
    wall = after["t"] - before["t"]
    served = after["served"] - before["served"]
    batches = after["batches"] - before["batches"]
    classes = {
        name: {
            "admitted": c["admitted"] - before["classes"][name]["admitted"],
            "wait_p99_ms": c["wait_p99_ms"],
            "wait_mean_ms": c["wait_mean_ms"],
        }
        for name, c in after["classes"].items()
    }
    return {
        "wall_s": round(wall, 3),
        "router_cpu_share": round((after["router_cpu_s"] - before["router_cpu_s"]) / wall, 3),
        "workers_cpu_share": round((after["workers_cpu_s"] - before["workers_cpu_s"]) / wall, 3),
        "bench_cpu_share": round((after["self_cpu_s"] - before["self_cpu_s"]) / wall, 3),
        "served_per_s": round(served / wall, 1),
        "avg_device_batch": round(served / batches, 2) if batches else 0.0,
        "router_cpu_ms_per_request": round(
            1000 * (after["router_cpu_s"] - before["router_cpu_s"]) / served, 3
        )
        if served
        else None,
        "classes": classes,
    }


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
        input_file_id=file.id,
        endpoint="/predict",  # type: ignore[arg-type]
        completion_window="24h",
    )
    return batch.id, started


def wait_batch(router: ServerProcess, batch_id: str) -> tuple[float, float, list[Any]]:
    """Block until the batch completes: when every request had its result, when it was seen
    completed (monotonic), and the runner's window as sampled meanwhile."""
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    sent_at = None
    windows: list[Any] = []
    while True:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        if sent_at is None and counts is not None and counts.completed == counts.total > 0:
            sent_at = time.monotonic()
        if len(windows) < 400:
            stats = asyncio.run(_json(router.url + "/stats"))
            windows.append(stats["batches"]["windows"].get("default"))
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            assert batch.status == "completed", batch
            assert counts is not None
            assert counts.completed == counts.total, batch
            done = time.monotonic()
            return sent_at or done, done, windows
        time.sleep(0.05)


async def generate(url: str, n: int) -> float:
    """``n`` prompts through ``gpufleet.Client``; items per second."""
    started = time.monotonic()
    async with Client(url) as client:
        results = [r async for r in client.stream([f"g{i}" for i in range(n)])]
    took = time.monotonic() - started
    assert len(results) == n
    return n / took


async def run_one(args: argparse.Namespace, share: float) -> dict[str, Any]:
    """The three phases on a new fleet whose router has ``--batch-share share``."""
    worker_args = (
        "--model-arg", f"base_ms={args.base_ms}", "--model-arg", f"per_item_ms={args.per_item_ms}",
        "--max-batch-size", str(args.max_batch),
    )  # fmt: skip
    out: dict[str, Any] = {"batch_share": share, "load_avg_start": os.getloadavg()[0]}
    store = Path(tempfile.mkdtemp(prefix="gpufleet-batch-bench-"))
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(run_worker("synthetic", *worker_args)) for _ in range(args.workers)
        ]
        router = stack.enter_context(
            run_router(
                [w.url for w in workers], "--batch-store", str(store), "--batch-share", str(share)
            )
        )
        probe = Probe(router, workers)
        await interactive(router.url, args.interactive, 2.0)  # warm-up: rates, caps
        p0 = await probe.take()
        idle = await interactive(router.url, args.interactive, args.seconds)
        p1 = await probe.take()
        batch_id, created = await asyncio.to_thread(run_batch, router, args.batch)
        waiter = asyncio.create_task(asyncio.to_thread(wait_batch, router, batch_id))
        during = await interactive(router.url, args.interactive, args.seconds)
        p2 = await probe.take()
        sent_at, done_at, windows = await waiter
        p3 = await probe.take()
        batch_rate = args.batch / (done_at - created)
        gen_rate = await generate(router.url, args.batch)
        p4 = await probe.take()
    limits = [w["limit"] for w in windows if w]
    in_flight = [w["in_flight"] for w in windows if w]
    out["phases"] = {
        "idle": phase(p0, p1),
        "batch_with_interactive": phase(p1, p2),
        "batch_whole": phase(p1, p3),
        "generate": phase(p3, p4),
    }
    out["batch_send_s"] = round(sent_at - created, 3)
    out["batch_finalize_s"] = round(done_at - sent_at, 3)
    out["batch_window"] = {
        "limit_max": max(limits, default=0),
        "in_flight_mean": round(statistics.fmean(in_flight), 1) if in_flight else 0.0,
    }
    out.update(
        idle={"n": len(idle), "p50_ms": _pct(idle, 0.5), "p99_ms": _pct(idle, 0.99),
              "mean_ms": statistics.fmean(idle) * 1000},
        during={"n": len(during), "p50_ms": _pct(during, 0.5), "p99_ms": _pct(during, 0.99),
                "mean_ms": statistics.fmean(during) * 1000},
        batch_rate=batch_rate,
        generate_rate=gen_rate,
    )  # fmt: skip
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Each ``--batch-share`` in turn, on a fleet of its own."""
    runs = [await run_one(args, share) for share in args.batch_share]
    return {"args": vars(args), "runs": runs, "load_avg_end": os.getloadavg()[0]}


def report(out: dict[str, Any]) -> None:
    """Print one run's tables (Markdown)."""
    idle, during = out["idle"], out["during"]
    print(f"### --batch-share {out['batch_share']:g} (load average at start "
          f"{out['load_avg_start']:.2f})")  # fmt: skip
    print()
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
    window = out["batch_window"]
    print(f"- batch: {out['batch_send_s']:.2f} s until every request had its result, then "
          f"{out['batch_finalize_s']:.2f} s to completed; runner window up to "
          f"{window['limit_max']}, {window['in_flight_mean']} held on average")  # fmt: skip
    print()
    print(
        "| phase | router CPU | workers CPU | bench CPU | served/s | device batch | "
        "router CPU ms/req | interactive admitted, wait p99 ms | batch admitted, wait p99 ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, ph in out["phases"].items():
        ci, cb = ph["classes"]["interactive"], ph["classes"]["batch"]
        print(f"| {name} | {ph['router_cpu_share']:.2f} | {ph['workers_cpu_share']:.2f} | "
              f"{ph['bench_cpu_share']:.2f} | {ph['served_per_s']:.0f} | "
              f"{ph['avg_device_batch']:.2f} | {ph['router_cpu_ms_per_request']} | "
              f"{ci['admitted']}, {ci['wait_p99_ms']:.1f} | {cb['admitted']}, "
              f"{cb['wait_p99_ms']:.1f} |")  # fmt: skip
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--base-ms", type=float, default=20.0)
    parser.add_argument("--per-item-ms", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--interactive", type=int, default=2, help="interactive callers")
    parser.add_argument("--seconds", type=float, default=10.0, help="each interactive phase")
    parser.add_argument("--batch", type=int, default=5000, help="lines in the batch")
    parser.add_argument(
        "--batch-share",
        type=float,
        nargs="+",
        default=[75.0],
        help="the router's --batch-share; several: one fleet each, side by side",
    )
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    for run in out["runs"]:
        report(run)
    print(f"load average at the end: {out['load_avg_end']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
