"""Throughput of one worker: its HTTP API vs the same model in-process, batched vs unbatched.

Run (a script, not a test; it takes about a minute on 2 CPU cores)::

    .venv/bin/python benchmarks/worker_batching.py --requests 2000 --concurrency 64

Three phases, one after the other so they never share the CPU:

1. ``in-process``: ``MiniLM.predict`` called directly with batches of ``--batch`` texts.
2. ``worker``: ``gpufleet worker --model minilm --max-batch-size BATCH``, driven over HTTP
   by ``--concurrency`` callers, each sending single-text ``POST /predict`` requests.
3. ``worker-unbatched``: the same with ``--max-batch-size 1``.

It prints a Markdown table (and ``--json`` writes the figures) for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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


def in_process(corpus: list[str], batch: int, seconds: float) -> dict[str, Any]:
    """Items/s of ``MiniLM.predict`` on batches of ``batch`` for about ``seconds``."""
    from gpufleet.models.minilm import MiniLM

    model = MiniLM()
    model.setup("cpu")
    model.predict(corpus[:batch])  # warm-up
    done, i = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = corpus[i : i + batch] or corpus[:batch]
        model.predict(chunk)
        done += len(chunk)
        i = (i + batch) % len(corpus)
    elapsed = time.perf_counter() - started
    del model
    gc.collect()
    return {"phase": "in-process", "items": done, "seconds": elapsed, "items_per_s": done / elapsed}


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
        started = time.perf_counter()
        await asyncio.gather(*(caller(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        async with session.get(url + "/stats") as r:
            after = await r.json()
    latencies.sort()
    batches = after["batches"] - before["batches"]
    return {
        "items": requests,
        "seconds": elapsed,
        "items_per_s": requests / elapsed,
        "failures": failures,
        "avg_batch_size": requests / batches if batches else 0.0,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def through_worker(
    corpus: list[str], batch: int, requests: int, concurrency: int, phase: str
) -> dict[str, Any]:
    """Start a minilm worker with ``--max-batch-size batch`` and drive it."""
    args = ["--max-batch-size", str(batch), "--max-queue", "4096", "--device", "cpu"]
    with run_worker("minilm", *args, timeout=180) as w:
        result = asyncio.run(drive(w.url, corpus, requests, concurrency))
    return {"phase": phase, **result}


def main() -> None:
    """Run the three phases and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--in-process-seconds", type=float, default=15.0)
    p.add_argument("--unbatched-requests", type=int, default=0, help="default: requests / 2")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args()
    corpus = texts(max(a.requests, 512))
    rows = [in_process(corpus, a.batch, a.in_process_seconds)]
    rows.append(through_worker(corpus, a.batch, a.requests, a.concurrency, "worker"))
    unbatched = a.unbatched_requests or a.requests // 2
    rows.append(through_worker(corpus, 1, unbatched, a.concurrency, "worker-unbatched"))
    base = rows[0]["items_per_s"]
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    print(f"machine: {machine}; concurrency {a.concurrency}; max batch {a.batch}")
    print("| phase | items | items/s | vs in-process | avg batch | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        avg = f"{r['avg_batch_size']:.1f}" if "avg_batch_size" in r else f"{a.batch}"
        p50 = f"{r['p50_ms']:.0f}" if "p50_ms" in r else "-"
        p99 = f"{r['p99_ms']:.0f}" if "p99_ms" in r else "-"
        print(
            f"| {r['phase']} | {r['items']} | {r['items_per_s']:.0f} | "
            f"{r['items_per_s'] / base:.0%} | {avg} | {p50} | {p99} |"
        )
    if a.json:
        a.json.write_text(
            json.dumps(
                {"machine": machine, "args": vars(a) | {"json": str(a.json)}, "rows": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
