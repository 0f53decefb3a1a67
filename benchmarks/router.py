"""The router's cost and balance, measured in one run on loopback (a script, not a test).

Run (about three minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/router.py --json router.json

Three parts, each with real processes on 127.0.0.1 and the load generated here (aiohttp
on uvloop when installed):

1. ``proxy``: near-zero-cost echo upstreams (``gpufleet.testing.upstreams``, ``GET
   /echo``) driven straight and through ``gpufleet router``, interleaved in ``--rounds``
   rounds (median kept): requests/s, p50/p99, and the router process's CPU time per
   proxied request, read from ``/proc/<pid>/stat`` before and after.
2. ``mixed``: 4 ``synthetic`` workers serving one request at a time in 40 ms, one of them
   4x slower (160 ms); ideal capacity 3/0.04 + 1/0.16 = 81.25 req/s. Per policy
   (round-robin, least-outstanding, capacity; no weights): a closed loop at concurrency
   16 and an open loop (Poisson arrivals) at 80% of the ideal; throughput as a fraction
   of the ideal and p99 latency. Once with the default per-upstream cap (a gpufleet
   worker's batch size: 1 here) and once with ``--max-outstanding 16`` (caps out of the
   way, as behind a plain balancer).
3. ``scaling``: N = 1, 2, 4, 8 ``synthetic`` workers of 10 ms per request behind the
   router (default policy), closed loop at 4 requests per worker; throughput / (N x one
   worker's, measured straight without the router).

It prints Markdown tables for docs/performance.md (``--json`` writes the raw figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet.testing import ServerProcess, run_router, run_worker
from gpufleet.testing.upstreams import run_upstream

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds process ``pid`` has run so far (user and system).

    From ``/proc/<pid>/schedstat`` (the scheduler's own count, in ns) where the kernel has
    it; else utime + stime from ``/proc/<pid>/stat``, which are sampled at the clock tick.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def pct(sorted_s: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of sorted seconds, in milliseconds."""
    if not sorted_s:
        return float("nan")
    idx = min(len(sorted_s) - 1, max(0, round(q * len(sorted_s) + 0.5) - 1))
    return sorted_s[idx] * 1000.0


async def closed_loop(
    urls: Sequence[str], requests: int, concurrency: int, *, method: str = "GET"
) -> dict[str, Any]:
    """``requests`` requests, ``concurrency`` in flight, spread over ``urls`` in turn."""
    latencies: list[float] = []
    errors = 0
    todo = iter(range(requests))
    body = b'{"input": "x"}'
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def caller() -> None:
            nonlocal errors
            for i in todo:
                url = urls[i % len(urls)]
                started = time.perf_counter()
                data = body if method == "POST" else None
                async with session.request(method, url, data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": requests,
        "errors": errors,
        "seconds": elapsed,
        "rps": requests / elapsed,
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
    }


async def paced_loop(url: str, requests: int, gap_s: float) -> dict[str, Any]:
    """One request at a time, ``gap_s`` apart."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            started = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(gap_s)
    latencies.sort()
    return {"requests": requests, "p50_ms": pct(latencies, 0.5), "p99_ms": pct(latencies, 0.99)}


async def open_loop(url: str, rate: float, seconds: float, seed: int = 1) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` per second for ``seconds``, whatever the answers do."""
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=300)
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            async with session.post(url, json={"input": "x"}) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        next_at = started
        end = started + seconds
        while True:
            next_at += rng.expovariate(rate)
            if next_at >= end:
                break
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(tasks),
        "errors": errors,
        "seconds": elapsed,
        "offered_rps": rate,
        "rps": len(tasks) / elapsed,
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
    }


# 1. proxy cost --------------------------------------------------------------------------

#: A bare aiohttp server answering a fixed body: what the router's HTTP server side costs
#: before it does any proxying (the floor under the router's own figure).
_BARE_SERVER = """
import asyncio, sys
from aiohttp import web
try:
    import uvloop
except ImportError:
    uvloop = None
async def answer(request):
    await request.read()
    return web.Response(body=b'{"ok": true}', content_type="application/json")
async def main():
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
(uvloop.run if uvloop else asyncio.run)(main())
"""


@contextlib.contextmanager
def bare_server() -> Iterator[tuple[int, str]]:
    """Run ``_BARE_SERVER``; yield its pid and URL."""
    proc = subprocess.Popen([sys.executable, "-c", _BARE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield proc.pid, f"http://127.0.0.1:{port}/echo"
    finally:
        proc.kill()
        proc.wait()


async def proxy_cost(requests: int, concurrency: int, rounds: int) -> dict[str, Any]:
    """Echo upstreams straight vs through the router; router CPU per proxied request."""
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream()) for _ in range(2)]
        direct_urls = [u.url + "/echo" for u in ups]
        router = stack.enter_context(
            run_router([u.url for u in ups], "--max-outstanding", str(concurrency))
        )
        routed = [router.url + "/echo"]
        await closed_loop(routed, 1000, concurrency)  # warm: connections, rates
        await closed_loop(direct_urls, 1000, concurrency)
        direct_rows, router_rows = [], []
        for _ in range(rounds):
            direct_rows.append(await closed_loop(direct_urls, requests, concurrency))
            cpu0 = cpu_seconds(router.pid)
            row = await closed_loop(routed, requests, concurrency)
            row["router_cpu_us"] = (cpu_seconds(router.pid) - cpu0) / requests * 1e6
            router_rows.append(row)
        with bare_server() as (bare_pid, bare_url):
            await closed_loop([bare_url], 1000, concurrency)
            bare_rows = []
            for _ in range(rounds):
                cpu0 = cpu_seconds(bare_pid)
                row = await closed_loop([bare_url], requests, concurrency)
                row["server_cpu_us"] = (cpu_seconds(bare_pid) - cpu0) / requests * 1e6
                bare_rows.append(row)
            # The same server, one request every 10 ms (as a 10 ms worker paces a router):
            # each request now wakes an idle process, which costs CPU of its own.
            cpu0 = cpu_seconds(bare_pid)
            paced = await paced_loop(bare_url, requests // 20, 0.010)
            paced["server_cpu_us"] = (cpu_seconds(bare_pid) - cpu0) / (requests // 20) * 1e6
        # One request at a time: the CPU of waking up for each request shows here.
        single_direct = await closed_loop(direct_urls, requests // 5, 1)
        cpu0 = cpu_seconds(router.pid)
        single = await closed_loop(routed, requests // 5, 1)
        single["router_cpu_us"] = (cpu_seconds(router.pid) - cpu0) / (requests // 5) * 1e6
    return {
        "direct": _median(direct_rows),
        "router": _median(router_rows),
        "bare": _median(bare_rows),
        "bare_paced": paced,
        "direct_c1": single_direct,
        "router_c1": single,
        "rounds": {"direct": direct_rows, "router": router_rows},
    }


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(r[k] for r in rows) for k in keys}


# 2. mixed fleet -------------------------------------------------------------------------

MIXED_MS = 40
MIXED_SPEEDS = (1.0, 1.0, 1.0, 0.25)
MIXED_IDEAL = sum(s * 1000.0 / MIXED_MS for s in MIXED_SPEEDS)


@contextlib.contextmanager
def synthetic_workers(speeds: Sequence[float], base_ms: int) -> Iterator[list[ServerProcess]]:
    """One ``synthetic`` worker per speed, one request at a time (batch size 1)."""
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
                    "1",
                    "--max-queue",
                    "4096",
                )
            )
            for speed in speeds
        ]


async def mixed_fleet(
    policies: Sequence[str], closed_requests: int, open_seconds: float
) -> list[dict[str, Any]]:
    """Each policy, default cap and cap 16, closed loop c=16 and open loop at 80%."""
    rows: list[dict[str, Any]] = []
    with synthetic_workers(MIXED_SPEEDS, MIXED_MS) as workers:
        urls = [w.url for w in workers]
        # What the four deliver on this machine, each driven straight (2 in flight each,
        # all at once): the workers' own overhead makes this a little under the ideal.
        straight = await asyncio.gather(
            *(
                closed_loop(
                    [u + "/predict"], max(8, int(2.5 * s * 1000 / MIXED_MS)), 2, method="POST"
                )
                for u, s in zip(urls, MIXED_SPEEDS, strict=True)
            )
        )
        measured = sum(r["rps"] for r in straight)
        print(f"  measured capacity {measured:.1f}/s (ideal {MIXED_IDEAL:.2f})", flush=True)
        for cap in ("default", "16"):
            for policy in policies:
                extra = [] if cap == "default" else ["--max-outstanding", cap]
                with run_router(urls, "--policy", policy, *extra) as router:
                    target = router.url + "/predict"
                    # Warm-up: connections, and the rates the capacity policy measures.
                    await closed_loop([target], 120, 16, method="POST")
                    closed = await closed_loop([target], closed_requests, 16, method="POST")
                    opened = await open_loop(target, 0.8 * MIXED_IDEAL, open_seconds)
                    stats = await _get_json(router.url + "/stats")
                share = {w["url"]: w["served"] for w in stats["workers"]}
                for name, row in (("closed c=16", closed), ("open 80%", opened)):
                    rows.append(
                        {
                            "cap": cap,
                            "policy": policy,
                            "load": name,
                            **row,
                            "of_ideal": row["rps"] / MIXED_IDEAL,
                            "of_measured": row["rps"] / measured,
                            "measured_capacity": measured,
                            "slow_share": share[urls[-1]] / max(1, sum(share.values())),
                        }
                    )
                print(
                    f"  mixed cap={cap} {policy}: closed {closed['rps']:.1f}/s "
                    f"p99 {closed['p99_ms']:.0f} ms; open {opened['rps']:.1f}/s "
                    f"p99 {opened['p99_ms']:.0f} ms",
                    flush=True,
                )
    return rows


async def _get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json(content_type=None)


# 3. scaling -----------------------------------------------------------------------------

SCALE_MS = 10


async def scaling(sizes: Sequence[int], seconds_each: float) -> list[dict[str, Any]]:
    """Throughput of N workers behind the router over N x one worker straight.

    Twice per N: with the default cap (2 batches per gpufleet worker) and with a cap of
    one batch (``--max-outstanding 1``), which leaves the device idle for a round trip
    through the router after every batch.
    """
    rows: list[dict[str, Any]] = []
    with synthetic_workers([1.0] * max(sizes), SCALE_MS) as workers:
        one_rate = 1000.0 / SCALE_MS
        n_single = int(one_rate * seconds_each)
        await closed_loop([workers[0].url + "/predict"], 50, 4, method="POST")
        # The median of three runs: one worker's rate drifts with the machine's load.
        singles = [
            await closed_loop([workers[0].url + "/predict"], n_single // 2, 4, method="POST")
            for _ in range(3)
        ]
        single = sorted(singles, key=lambda r: float(r["rps"]))[1]
        print(f"  one worker straight: {single['rps']:.1f}/s", flush=True)
        for n in sizes:
            # The same N workers driven straight (requests spread over them in turn).
            count = int(one_rate * n * seconds_each)
            urls = [w.url + "/predict" for w in workers[:n]]
            await closed_loop(urls, 20 * n, 4 * n, method="POST")
            straight = await closed_loop(urls, count, 4 * n, method="POST")
            for cap in ("default", "1"):
                extra = [] if cap == "default" else ["--max-outstanding", cap]
                with run_router([w.url for w in workers[:n]], *extra) as router:
                    target = [router.url + "/predict"]
                    await closed_loop(target, 40 * n, 4 * n, method="POST")
                    count = int(one_rate * n * seconds_each)
                    cpu0 = cpu_seconds(router.pid)
                    row = await closed_loop(target, count, 4 * n, method="POST")
                    row["router_cpu_us"] = (cpu_seconds(router.pid) - cpu0) / count * 1e6
                row["workers"] = n
                row["cap"] = cap
                row["efficiency"] = row["rps"] / (n * single["rps"])
                row["of_straight"] = row["rps"] / straight["rps"]
                row["straight_rps"] = straight["rps"]
                rows.append(row)
                print(
                    f"  {n} worker(s), cap {cap}: {row['rps']:.1f}/s, "
                    f"efficiency {row['efficiency']:.3f}",
                    flush=True,
                )
    return [{"workers": 0, "single": True, **single}, *rows]


# report ---------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    """Markdown tables of ``results``."""
    out: list[str] = []
    p = results["proxy"]
    d, r = p["direct"], p["router"]
    c = results["args"]["concurrency"]
    d1, r1 = p["direct_c1"], p["router_c1"]
    out += [
        "| path | in flight | requests/s | p50 ms | p99 ms | router CPU µs/request |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| straight to the echo upstreams | {c} | {d['rps']:.0f} | {d['p50_ms']:.2f} | "
        f"{d['p99_ms']:.2f} | — |",
        f"| through the router | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
        f"{r['p99_ms']:.2f} | {r['router_cpu_us']:.0f} |",
        f"| bare aiohttp server, fixed answer (CPU: that server's) | {c} | "
        f"{p['bare']['rps']:.0f} | {p['bare']['p50_ms']:.2f} | {p['bare']['p99_ms']:.2f} | "
        f"{p['bare']['server_cpu_us']:.0f} |",
        f"| bare aiohttp server, one request every 10 ms | 1 | 100 | "
        f"{p['bare_paced']['p50_ms']:.2f} | {p['bare_paced']['p99_ms']:.2f} | "
        f"{p['bare_paced']['server_cpu_us']:.0f} |",
        f"| straight to the echo upstreams | 1 | {d1['rps']:.0f} | {d1['p50_ms']:.2f} | "
        f"{d1['p99_ms']:.2f} | — |",
        f"| through the router | 1 | {r1['rps']:.0f} | {r1['p50_ms']:.2f} | "
        f"{r1['p99_ms']:.2f} | {r1['router_cpu_us']:.0f} |",
        "",
        "| cap | policy | load | requests/s | of ideal | of measured | p50 ms | p99 ms "
        "| slow worker's share |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["mixed"]:
        out.append(
            f"| {row['cap']} | {row['policy']} | {row['load']} | {row['rps']:.1f} | "
            f"{row['of_ideal']:.3f} | {row['of_measured']:.3f} | {row['p50_ms']:.0f} | "
            f"{row['p99_ms']:.0f} | "
            f"{row['slow_share']:.3f} |"
        )
    out += [
        "",
        "| workers | cap | requests/s | / (N × one worker) | N straight, requests/s "
        "| / N straight | p50 ms | p99 ms | router CPU µs/request |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["scaling"]:
        if row.get("single"):
            out.append(
                f"| 1, straight | — | {row['rps']:.1f} | 1.000 | — | — | {row['p50_ms']:.1f} | "
                f"{row['p99_ms']:.1f} | — |"
            )
        else:
            out.append(
                f"| {row['workers']} | {row['cap']} | {row['rps']:.1f} | {row['efficiency']:.3f} | "
                f"{row['straight_rps']:.1f} | {row['of_straight']:.3f} | "
                f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['router_cpu_us']:.0f} |"
            )
    return "\n".join(out)


def machine() -> str:
    """One line about this machine."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    return (
        f"{model or platform.processor()}, {os.cpu_count()} CPU cores, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"load average {load:.2f} at the start"
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    started = time.perf_counter()
    print("proxy cost ...", flush=True)
    results["proxy"] = await proxy_cost(args.requests, args.concurrency, args.rounds)
    print("mixed fleet ...", flush=True)
    results["mixed"] = await mixed_fleet(args.policies, args.mixed_requests, args.open_seconds)
    print("scaling ...", flush=True)
    results["scaling"] = await scaling(args.sizes, args.scale_seconds)
    results["seconds"] = time.perf_counter() - started
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="proxy part, per round")
    parser.add_argument("--concurrency", type=int, default=32, help="proxy part")
    parser.add_argument("--rounds", type=int, default=3, help="proxy part")
    parser.add_argument("--mixed-requests", type=int, default=800)
    parser.add_argument("--open-seconds", type=float, default=10.0)
    parser.add_argument(
        "--policies", nargs="+", default=["round-robin", "least-outstanding", "capacity"]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--scale-seconds", type=float, default=6.0)
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args()
    try:
        import uvloop

        results = uvloop.run(main_async(args))
    except ImportError:
        results = asyncio.run(main_async(args))
    print()
    print(f"machine: {results['machine']}; took {results['seconds']:.0f}s")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
