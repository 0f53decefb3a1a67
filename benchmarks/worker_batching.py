"""Throughput of one worker: its HTTP API vs the same model in-process, batched vs unbatched.

Run (a script, not a test; it takes about a minute on 2 CPU cores)::

    .venv/bin/python benchmarks/worker_batching.py --requests 2000 --concurrency 64

Three phases, interleaved in ``--rounds`` rounds (on a shared machine the load of other
processes drifts; the median of interleaved rounds is fairer than one long run each), one
phase at a time so they never share the CPU:

1. ``in-process``: ``MiniLM.predict`` called directly with batches of ``--batch`` texts.
2. ``worker``: ``gpufleet worker --model minilm --max-batch-size BATCH``, driven over HTTP
   by ``--concurrency`` callers, each sending single-text ``POST /predict`` requests.
3. ``worker-unbatched``: the same with ``--max-batch-size 1``.

It prints a Markdown table (and ``--json`` writes the figures) for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet.testing import run_worker

_SUBJECTS = ["the cat", "a market", "our team", "the river", "a new phone", "the old bridge"]
_VERBS = ["watched", "reported on", "crossed", "ignored", "celebrated", "described"]
_OBJECTS = ["the quiet morning", "falling prices", "a long storm", "the city lights", "it"]


def texts(n: int) -> list[str]:
    """``n`` distinct sentences of 8-14 words, like short search queries or titles."""
    out = []
    for i in range(n):
        s = _SUBJECTS[i % len(_SUBJECTS)]
        v = _VERBS[(i // 6) % len(_VERBS)]
        o = _OBJECTS[(i // 36) % len(_OBJECTS)]
        out.append(f"{s} {v} {o} on day {i} while everyone else was busy")
    return out


def in_process(model: Any, corpus: list[str], batch: int, seconds: float) -> dict[str, Any]:
    """Items/s of ``model.predict`` on batches of ``batch`` for about ``seconds``."""
    done, i = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = corpus[i : i + batch] or corpus[:batch]
        model.predict(chunk)
        done += len(chunk)
        i = (i + batch) % len(corpus)
    elapsed = time.perf_counter() - started
    return {"phase": "in-process", "items": done, "seconds": elapsed, "items_per_s": done / elapsed}


async def compute_seconds(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds the worker's model has spent in ``predict`` so far (from /metrics)."""
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    prefix = "gpufleet_worker_compute_seconds_sum"
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def drive(url: str, corpus: list[str], requests: int, concurrency: int) -> dict[str, Any]:
    """Send ``requests`` single-text requests with ``concurrency`` callers; time them."""
    latencies: list[float] = []
    next_index = 0
    failures = 0

    async def caller(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, failures
        while next_index < requests:
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            payload = {"input": corpus[i % len(corpus)]}
            async with session.post(url + "/predict", json=payload) as r:
                await r.read()
                if r.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up outside the timed window (first requests pay connection set-up).
        await asyncio.gather(
            *(session.post(url + "/predict", json={"input": "warm"}) for _ in range(concurrency))
        )
        async with session.get(url + "/stats") as r:
            before = await r.json()
        compute_before = await compute_seconds(session, url)
        started = time.perf_counter()
        await asyncio.gather(*(caller(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        async with session.get(url + "/stats") as r:
            after = await r.json()
        compute = await compute_seconds(session, url) - compute_before
    latencies.sort()
    batches = after["batches"] - before["batches"]
    return {
        "items": requests,
        "seconds": elapsed,
        "items_per_s": requests / elapsed,
        "failures": failures,
        "avg_batch_size": requests / batches if batches else 0.0,
        # The share of wall time the model spent in predict: 1.0 means the worker kept the
        # model busy all the time, whatever else the machine was doing.
        "model_busy": compute / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput, with the spread of all rounds."""
    ordered = sorted(rows, key=lambda r: r["items_per_s"])
    row = dict(ordered[len(ordered) // 2])
    row["min_items_per_s"] = ordered[0]["items_per_s"]
    row["max_items_per_s"] = ordered[-1]["items_per_s"]
    return row


def main() -> None:
    """Run the phases in interleaved rounds and print the median of each."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=1500, help="per round, batched worker")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--in-process-seconds", type=float, default=6.0, help="per round")
    p.add_argument("--unbatched-requests", type=int, default=0, help="default: requests / 3")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for the model, in-process and in the workers (0: torch's default); "
        "1 leaves a core for HTTP and the load generator, as a GPU host would",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, … (in-process and workers)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()
    from gpufleet.models.minilm import MiniLM

    corpus = texts(max(a.requests, 512))
    unbatched_n = a.unbatched_requests or a.requests // 3
    model = MiniLM(threads=a.threads)
    model.setup(a.device)
    # Warm-up: every sequence length once, so no phase pays first-shape costs.
    for i in range(0, len(corpus), a.batch):
        model.predict(corpus[i : i + a.batch])
    common = ["--max-queue", "4096", "--device", a.device]
    if a.threads:
        common += ["--model-arg", f"threads={a.threads}"]
    results: dict[str, list[dict[str, Any]]] = {
        "in-process": [],
        "worker": [],
        "worker-unbatched": [],
    }
    with (
        run_worker("minilm", "--max-batch-size", str(a.batch), *common, timeout=180) as batched,
        run_worker("minilm", "--max-batch-size", "1", *common, timeout=180) as unbatched,
    ):
        asyncio.run(drive(batched.url, corpus, len(corpus), a.concurrency))  # warm-up
        asyncio.run(drive(unbatched.url, corpus, a.concurrency * 2, a.concurrency))
        for r in range(a.rounds):
            results["in-process"].append(in_process(model, corpus, a.batch, a.in_process_seconds))
            w = asyncio.run(drive(batched.url, corpus, a.requests, a.concurrency))
            results["worker"].append({"phase": "worker", **w})
            u = asyncio.run(drive(unbatched.url, corpus, unbatched_n, a.concurrency))
            results["worker-unbatched"].append({"phase": "worker-unbatched", **u})
            print(
                f"round {r + 1}: "
                + ", ".join(f"{k} {v[-1]['items_per_s']:.0f}/s" for k, v in results.items()),
                flush=True,
            )
    rows = [median_row(v) for v in results.values()]
    base = rows[0]["items_per_s"]
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    )
    print(
        f"machine: {machine}; concurrency {a.concurrency}; max batch {a.batch}; "
        f"median of {a.rounds} interleaved rounds; torch threads {a.threads or 'default'}"
    )
    print(
        "| phase | items/s (median) | min–max | vs in-process | avg batch | model busy "
        "| p50 ms | p99 ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        avg = f"{r['avg_batch_size']:.1f}" if "avg_batch_size" in r else f"{a.batch}"
        p50 = f"{r['p50_ms']:.0f}" if "p50_ms" in r else "-"
        p99 = f"{r['p99_ms']:.0f}" if "p99_ms" in r else "-"
        busy = f"{r['model_busy']:.0%}" if "model_busy" in r else "100%"
        print(
            f"| {r['phase']} | {r['items_per_s']:.0f} | "
            f"{r['min_items_per_s']:.0f}–{r['max_items_per_s']:.0f} | "
            f"{r['items_per_s'] / base:.0%} | {avg} | {busy} | {p50} | {p99} |"
        )
    if a.json:
        payload = {
            "machine": machine,
            "args": {**vars(a), "json": str(a.json)},
            "median": rows,
            "rounds": results,
        }
        a.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
