"""LLM routing: gpufleet's defaults vs the SGLang gateway and vLLM's router (a script, not a test).

Run (the peers in a venv of their own, never in the project's dependencies; each run
of one router takes 20-40 s on 2 CPU cores, engines and router started included)::

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install sglang-router vllm-router
    .venv/bin/python benchmarks/llm_routing.py --peers /tmp/peers \\
        --speeds 1,1,1,1 --speeds 1,1,1,0.25 --json llm.json
    .venv/bin/python benchmarks/llm_routing.py --peers /tmp/peers --workloads noprefix,onetenant

The workload of issue 11: ``--tenants`` (16) tenants, each with its own system prompt of
``--system-tokens`` (1,500) tokens, and a user message of ``--user-tokens`` (about 60)
tokens that is new on every request; streamed chat completions (``stream: true``,
``stream_options.include_usage``) of ``--max-tokens`` (32) tokens, ``--concurrency`` (48)
in flight in a closed loop. Two more workloads (``--workloads``): ``noprefix`` (every
request has a system prompt of its own: nothing to share) and ``onetenant`` (one tenant
sends everything: affinity alone would put the whole load on one engine).

The fleet is ``gpufleet.testing.llm_engine`` processes (continuous batching, a prefix KV
cache of ``--block-tokens``-token blocks, LRU-evicted; wall time, not CPU), one per entry
of ``--speeds`` (``1,1,1,0.25``: the last one four times slower; repeat the flag for
more fleets). Their KV cache holds ``--kv-fraction`` (half) of what the ``--tenants``
tenants need in all (system prompt, user message and answer, in blocks), unless
``--kv-blocks`` says otherwise; every workload runs on the same engines.

For each fleet, workload and router (``--routers``: ``gpufleet`` with its defaults, no
``--policy`` and no ``--max-outstanding``; ``sglang-POLICY``, the SGLang Model Gateway,
``smg launch``; ``vllm-POLICY``, ``vllm-router``; a ``--gpufleet LABEL=SRC`` adds a
gpufleet router run from another source tree, for an A/B): FRESH engines (cold caches),
the router in front of them on 127.0.0.1, ready once a one-token chat answers through
it, a warm-up of ``--warmup`` requests, then ``--requests`` measured ones. Reported:
requests/s, output tokens/s, time to first token (client side: to the first chunk with
content) p50/p99 and the engines' own mean TTFT (their ``/metrics``; the rest of the
client's figure is the router's and the client's time), end-to-end p50/p99, each
engine's share of the requests and cache hit rate (prompt tokens found in its KV cache,
from its ``/stats``; all engine figures are of the measured phase only), and the router
process's CPU per request (``/proc/<pid>/task/*/schedstat``, all its threads, before
and after the measured phase). ``--rounds N`` repeats every comparison in rotated order
and reports the means (and each round's requests/s). Markdown tables, then the issue's
targets met or missed; ``--json`` writes the raw figures, ``--from-json`` prints a saved
file's tables again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet.testing import free_port, run_engine, run_router

_TICK = os.sysconf("SC_CLK_TCK")
WORKLOADS = ("shared", "noprefix", "onetenant")
DEFAULT_ROUTERS = ("gpufleet", "sglang-cache_aware", "vllm-round_robin", "vllm-cache_aware")


# CPU ------------------------------------------------------------------------------------


def _pids(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError, ValueError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of ``pid`` and its descendants so far: (schedstat, stat).

    The first sums ``/proc/<pid>/task/<tid>/schedstat`` over every thread (the
    scheduler's count, in ns: a Rust router runs on worker threads, not its main one);
    the second is utime + stime of ``/proc/<pid>/stat`` (whole process, threads that
    have exited included, at the clock tick), a cross-check.
    """
    sched = stat = 0.0
    for p in _pids(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    sched += int((task / "schedstat").read_text().split()[0]) / 1e9
            text = Path(f"/proc/{p}/stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            stat += (int(fields[11]) + int(fields[12])) / _TICK
    return sched, stat


def pct(sorted_s: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of sorted seconds, in milliseconds."""
    if not sorted_s:
        return float("nan")
    idx = min(len(sorted_s) - 1, max(0, round(q * len(sorted_s) + 0.5) - 1))
    return sorted_s[idx] * 1000.0


# workload -------------------------------------------------------------------------------

_SYLLABLES = [c + v for c in "kstnhmyrwgzdbp" for v in "aeiou"]


def _vocabulary(n: int = 4096, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4))))
    return sorted(words)


VOCAB = _vocabulary()


def _words(rng: random.Random, n: int) -> str:
    """``n`` words: ``n`` tokens of the simulated engine's tokenizer."""
    return " ".join(rng.choices(VOCAB, k=n))


@dataclass(frozen=True)
class Workload:
    """What the clients send: one body per request, made in advance."""

    name: str
    tenants: int
    system_tokens: int
    user_tokens: int
    max_tokens: int
    model: str = "sim-llm"

    def bodies(self, n: int, seed: int) -> list[bytes]:
        """``n`` request bodies (tenant picked uniformly; user message new every time)."""
        rng = random.Random(seed)
        systems = [
            f"You are the assistant of tenant {t}. "
            + _words(random.Random(1000 + t), self.system_tokens - 7)
            for t in range(self.tenants)
        ]
        out = []
        for i in range(n):
            if self.name == "noprefix":
                system = f"Request {seed}-{i}. " + _words(rng, self.system_tokens - 2)
            else:
                system = systems[rng.randrange(self.tenants)]
            # +-25%: user messages are not all one length.
            k = max(1, round(self.user_tokens * rng.uniform(0.75, 1.25)))
            user = f"Question {seed}-{i}: " + _words(rng, k - 2)
            body = {
                "model": self.model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                "max_tokens": self.max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            out.append(json.dumps(body).encode())
        return out


def workload(name: str, args: argparse.Namespace) -> Workload:
    tenants = 1 if name == "onetenant" else args.tenants
    return Workload(
        name, tenants, args.system_tokens, args.user_tokens, args.max_tokens, args.model
    )


def kv_blocks(args: argparse.Namespace) -> int:
    """KV capacity per engine: ``--kv-fraction`` of what all tenants' requests need."""
    if args.kv_blocks:
        return int(args.kv_blocks)
    # The chat template adds a few tokens per message (engine's tokens.render_chat).
    per_request = args.system_tokens + args.user_tokens + 6 + args.max_tokens
    blocks: int = math.ceil(per_request / args.block_tokens)
    fraction: float = args.kv_fraction
    tenants: int = args.tenants
    return math.ceil(fraction * tenants * blocks)


# load -----------------------------------------------------------------------------------

_CONTENT = re.compile(rb'"content"\s*:\s*"[^"]')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
#: The simulated engine's own account of a request (its final chunk; not an OpenAI field).
_TIMING = re.compile(rb'"sim_timing"\s*:\s*(\{[^}]*\})')


@dataclass(slots=True)
class Answer:
    """One streamed answer as the client saw it, and the engine's account of it."""

    status: int
    ttft_s: float
    total_s: float
    tokens: int
    timing: dict[str, Any] | None = None


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes) -> Answer:
    """POST a streamed chat; its status, TTFT, end-to-end time, output tokens, timing."""
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    ttft = math.nan
    buf = bytearray()
    async with session.post(url, data=body, headers=headers) as resp:
        scan = 0
        async for chunk in resp.content.iter_any():
            buf += chunk
            if ttft != ttft and _CONTENT.search(buf, max(0, scan - 32)):
                ttft = time.perf_counter() - started
            scan = len(buf)
        status = resp.status
    total = time.perf_counter() - started
    found = _COMPLETION.findall(buf)
    tokens = int(found[-1]) if found else len(_CONTENT.findall(buf))
    timing = _TIMING.search(buf)
    return Answer(status, ttft, total, tokens, json.loads(timing.group(1)) if timing else None)


def tail_breakdown(answers: Sequence[Answer], q: float = 0.98) -> dict[str, Any]:
    """Where the slowest first tokens' time went: router and client, engine queue, prefill.

    For the answers at or above the ``q`` quantile of TTFT (and, to compare, for all):
    the client's TTFT, the engine's own (arrival to first token) and its queue (arrival
    to admission), the rest (client TTFT minus engine TTFT: the router's queue, its CPU
    and the client's), the share admitted cold (under half the prompt cached) and the
    uncached prompt tokens of the step that admitted them.
    """
    timed = [a for a in answers if a.timing is not None]
    if not timed:
        return {}
    timed.sort(key=lambda a: a.ttft_s)
    cut = timed[min(len(timed) - 1, int(q * len(timed))) :]

    def summary(group: Sequence[Answer]) -> dict[str, float]:
        n = len(group)
        t = [a.timing for a in group if a.timing is not None]
        return {
            "n": n,
            "ttft_ms": statistics.fmean(a.ttft_s for a in group) * 1000.0,
            "engine_ttft_ms": statistics.fmean(x["ttft_ms"] for x in t),
            "engine_queued_ms": statistics.fmean(x["queued_ms"] for x in t),
            "outside_engine_ms": statistics.fmean(
                a.ttft_s * 1000.0 - a.timing["ttft_ms"] for a in group if a.timing is not None
            ),
            "cold": sum(1 for x in t if x["cached_tokens"] * 2 < x["prompt_tokens"]) / n,
            "step_prefill_tokens": statistics.fmean(x["step_prefill_tokens"] for x in t),
        }

    cold_by_engine: dict[int, int] = {}
    for a in timed:
        x = a.timing
        if x is not None and x["cached_tokens"] * 2 < x["prompt_tokens"]:
            cold_by_engine[x["engine"]] = cold_by_engine.get(x["engine"], 0) + 1
    return {
        "quantile": q,
        "tail": summary(cut),
        "all": summary(timed),
        "cold_requests": sum(cold_by_engine.values()),
        "cold_by_engine": {str(k): v for k, v in sorted(cold_by_engine.items())},
    }


async def closed_loop(url: str, bodies: Sequence[bytes], concurrency: int) -> dict[str, Any]:
    """Every body once, ``concurrency`` in flight; throughput and latencies."""
    answers: list[Answer] = []
    errors = 0
    todo = iter(bodies)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def caller() -> None:
            nonlocal errors
            for body in todo:
                try:
                    answer = await one_request(session, url, body)
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                if answer.status != 200 or answer.ttft_s != answer.ttft_s:
                    errors += 1
                    continue
                answers.append(answer)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ttfts = sorted(a.ttft_s for a in answers)
    e2e = sorted(a.total_s for a in answers)
    tokens = sum(a.tokens for a in answers)
    return {
        "requests": len(bodies),
        "ok": len(e2e),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(e2e) / elapsed,
        "tokens_per_s": tokens / elapsed,
        "output_tokens": tokens,
        "ttft_p50_ms": pct(ttfts, 0.50),
        "ttft_p99_ms": pct(ttfts, 0.99),
        "e2e_p50_ms": pct(e2e, 0.50),
        "e2e_p99_ms": pct(e2e, 0.99),
        "tail": tail_breakdown(answers),
    }


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json(content_type=None)


_TTFT_SUM = re.compile(rb"^vllm:time_to_first_token_seconds_sum(?:\{[^}]*\})? (\S+)", re.M)
_TTFT_COUNT = re.compile(rb"^vllm:time_to_first_token_seconds_count(?:\{[^}]*\})? (\S+)", re.M)


async def engine_ttft(url: str) -> tuple[float, float]:
    """(sum of seconds, count) of the engine's own time to first token, from ``/metrics``."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.read()
    s, c = _TTFT_SUM.search(text), _TTFT_COUNT.search(text)
    return (float(s.group(1)), float(c.group(1))) if s and c else (0.0, 0.0)


def _metric_sum(text: bytes, name: str) -> float:
    """The sum of every sample of ``name`` (any labels) in a Prometheus text page."""
    pattern = re.compile(rb"^" + re.escape(name.encode()) + rb"(?:\{[^}]*\})? (\S+)", re.M)
    return sum(float(m.group(1)) for m in pattern.finditer(text))


async def engine_figures(urls: Sequence[str]) -> list[dict[str, Any]]:
    """Each engine's ``/stats`` plus its TTFT sum and count.

    A real engine (``--engine-url``) has no ``/stats``: its counters come from vLLM's
    ``/metrics`` names (SGLang's are not read: its figures stay 0).
    """
    out = []
    for u in urls:
        try:
            stats = await get_json(u + "/stats")
        except (aiohttp.ClientError, ValueError):
            stats = None
        if not isinstance(stats, dict) or "served" not in stats:
            async with aiohttp.ClientSession() as session, session.get(u + "/metrics") as resp:
                text = await resp.read() if resp.status == 200 else b""
            stats = {
                "served": _metric_sum(text, "vllm:request_success_total"),
                "prefix_cache_queries": _metric_sum(text, "vllm:prefix_cache_queries_total"),
                "prefix_cache_hits": _metric_sum(text, "vllm:prefix_cache_hits_total"),
                "evicted_blocks": 0,
                "rejected": 0,
            }
        stats["ttft_sum"], stats["ttft_count"] = await engine_ttft(u)
        out.append(stats)
    return out


async def reset_caches(urls: Sequence[str]) -> None:
    """Ask running engines to drop their prefix caches (vLLM and SGLang routes; the
    simulated engine answers both), so that every router starts cold."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for u in urls:
            for path in ("/reset_prefix_cache", "/flush_cache"):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.post(u + path) as resp:
                        await resp.read()


# routers --------------------------------------------------------------------------------


@dataclass
class Router:
    """A running router: its URL, pid and the command line that started it."""

    name: str
    url: str
    pid: int
    cmd: list[str]
    stats_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _answers(url: str, body: bytes | None = None) -> bool:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()
        return bool(resp.status == 200)
    return False


#: The model named in every body (``--model``: a real engine's served model name).
MODEL = ["sim-llm"]


def _ping() -> bytes:
    body = {"model": MODEL[0], "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    return json.dumps(body).encode()


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    """Until a one-token chat completion answers 200 through the router (60 s at most)."""
    deadline = time.monotonic() + 60
    while not _answers(url + "/v1/chat/completions", _ping()):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"router at {url} did not get ready:\n{text}")
        time.sleep(0.2)


@contextlib.contextmanager
def peer_router(name: str, engines: Sequence[str], peers: Path) -> Iterator[Router]:
    """``sglang-POLICY`` (``smg launch``) or ``vllm-POLICY`` (``vllm-router``) on 127.0.0.1."""
    kind, _, policy = name.partition("-")
    port, metrics_port = free_port(), free_port()
    common = ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *engines]
    common += ["--policy", policy, "--prometheus-host", "127.0.0.1"]
    common += ["--prometheus-port", str(metrics_port)]
    if kind == "sglang":
        # INFO logs two lines per request: off, as gpufleet logs no access lines.
        cmd = [str(peers / "bin" / "smg"), "launch", *common, "--log-level", "warn"]
    elif kind == "vllm":
        cmd = [str(peers / "bin" / "vllm-router"), *common, "--log-level", "warning"]
    else:
        raise ValueError(f"unknown router {name!r}")
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-peer-"))
    log = workdir / "router.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, log)
        yield Router(name, url, proc.pid, cmd, extra={"log": str(log)})
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextlib.contextmanager
def gpufleet_router(name: str, engines: Sequence[str], src: str) -> Iterator[Router]:
    """``gpufleet router --worker URL ...`` with its defaults (``src``: another tree)."""
    env = {"PYTHONPATH": src} if src else None
    with run_router(engines, env=env) as proc:
        wait_ready(proc.url, proc.proc, proc.log_path)
        cmd = [sys.executable, "-m", "gpufleet", "router"]
        cmd += [a for u in engines for a in ("--worker", u)]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--port-file", "F"]
        if src:
            cmd = [f"PYTHONPATH={src}", *cmd]
        yield Router(name, proc.url, proc.pid, cmd, stats_url=proc.url + "/stats")


def start_router(
    name: str, engines: Sequence[str], args: argparse.Namespace
) -> contextlib.AbstractContextManager[Router]:
    if name == "gpufleet":
        return gpufleet_router(name, engines, "")
    if name in args.gpufleet:
        return gpufleet_router(name, engines, args.gpufleet[name])
    return peer_router(name, engines, args.peers)


# one comparison -------------------------------------------------------------------------


def engine_flags(speed: float, args: argparse.Namespace) -> list[str]:
    return [
        "--speed",
        str(speed),
        "--kv-blocks",
        str(kv_blocks(args)),
        "--block-tokens",
        str(args.block_tokens),
        "--max-running",
        str(args.max_running),
    ]


@contextlib.contextmanager
def engines(speeds: Sequence[float], args: argparse.Namespace) -> Iterator[list[str]]:
    """Fresh simulated engines' URLs, or the ``--engine-url`` ones (running already)."""
    if args.engine_url:
        yield list(args.engine_url)
        return
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_engine(*engine_flags(s, args))).url for s in speeds]


async def run_one(
    router_name: str, speeds: Sequence[float], wl: Workload, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """Fresh engines, the router in front, warm-up, measured loop; the figures."""
    warm = wl.bodies(args.warmup, seed=10_000 + seed)
    bodies = wl.bodies(args.requests, seed=seed)
    with engines(speeds, args) as urls:
        if args.engine_url:
            await reset_caches(urls)
        with start_router(router_name, urls, args) as router:
            target = router.url + "/v1/chat/completions"
            await closed_loop(target, warm, args.concurrency)
            before = await engine_figures(urls)
            stats0 = await get_json(router.stats_url) if router.stats_url else None
            cpu0 = cpu_seconds(router.pid)
            row = await closed_loop(target, bodies, args.concurrency)
            cpu1 = cpu_seconds(router.pid)
            after = await engine_figures(urls)
            router_stats = await get_json(router.stats_url) if router.stats_url else None
            load = os.getloadavg()[0]
    per_engine = []
    served_total = sum(a["served"] - b["served"] for a, b in zip(after, before, strict=True))
    hits = queries = 0
    ttft_s = sum(a["ttft_sum"] - b["ttft_sum"] for a, b in zip(after, before, strict=True))
    ttft_n = sum(a["ttft_count"] - b["ttft_count"] for a, b in zip(after, before, strict=True))
    for speed, a, b in zip(speeds, after, before, strict=True):
        served = a["served"] - b["served"]
        q = a["prefix_cache_queries"] - b["prefix_cache_queries"]
        h = a["prefix_cache_hits"] - b["prefix_cache_hits"]
        hits += h
        queries += q
        per_engine.append(
            {
                "speed": speed,
                "served": served,
                "share": served / served_total if served_total else 0.0,
                "hit_rate": h / q if q else 0.0,
                "hits": h,
                "queries": q,
                "evicted_blocks": a["evicted_blocks"] - b["evicted_blocks"],
                "rejected": a["rejected"] - b["rejected"],
            }
        )
    ok = max(1, row["ok"])
    row |= {
        "router": router_name,
        "hit_rate": hits / queries if queries else 0.0,
        "engine_ttft_mean_ms": ttft_s / ttft_n * 1000.0 if ttft_n else math.nan,
        "engines": per_engine,
        "busiest_share": max(e["share"] for e in per_engine),
        "cpu_us": (cpu1[0] - cpu0[0]) / ok * 1e6,
        "cpu_us_stat": (cpu1[1] - cpu0[1]) / ok * 1e6,
        "router_cpu_share": (cpu1[0] - cpu0[0]) / row["seconds"],
        "load_after": load,
        "cmd": router.cmd,
    }
    if router_stats is not None and stats0 is not None:
        pool = next(iter(router_stats["pools"].values()))
        row["gpufleet"] = {
            "policy": router_stats["policy"],
            "prefix": pool.get("prefix"),
            "caps": [w["max_outstanding"] for w in router_stats["workers"]],
            "engine_kinds": [w.get("engine") for w in router_stats["workers"]],
            "retries": router_stats["totals"]["retries"],
        } | router_phase(stats0, router_stats)
    return row


def router_phase(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What gpufleet's router did in the measured phase: its queue and its prefix choices."""
    p0 = next(iter(before["pools"].values()))
    p1 = next(iter(after["pools"].values()))
    c0, c1 = p0["classes"]["interactive"], p1["classes"]["interactive"]
    admitted = c1["admitted"] - c0["admitted"]
    waited_ms = c1["wait_mean_ms"] * c1["admitted"] - c0["wait_mean_ms"] * c0["admitted"]
    out: dict[str, Any] = {
        "queue_wait_mean_ms": waited_ms / admitted if admitted else 0.0,
        # The window of recent waits (warm-up included when it is short).
        "queue_wait_p99_ms": c1["wait_p99_ms"],
    }
    x0, x1 = p0.get("prefix"), p1.get("prefix")
    if x0 and x1:
        for k in ("lookups", "hits", "affine", "by_load", "placed"):
            if k in x1:
                out[k] = x1[k] - x0.get(k, 0)
    return out


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each figure over the rounds, plus each round's requests/s.

    Hit rates are pooled (cached prompt tokens over prompt tokens, all rounds), so that
    an engine that served nothing in one round does not pull its rate down; which engine
    a router loads most may change from round to round, hence ``busiest_share``.
    """
    for r in rows:
        r.setdefault("busiest_share", max(e["share"] for e in r["engines"]))
    out = dict(rows[0])
    for k, v in rows[0].items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = statistics.fmean(r[k] for r in rows)
    engines = []
    for i, first in enumerate(rows[0]["engines"]):
        mine = [r["engines"][i] for r in rows]
        e: dict[str, Any] = {k: statistics.fmean(m[k] for m in mine) for k in first}
        # Older JSON has no token counts: weigh by requests served instead.
        weight = "queries" if "queries" in first else "served"
        total = sum(m[weight] for m in mine)
        e["hit_rate"] = sum(m["hit_rate"] * m[weight] for m in mine) / total if total else None
        engines.append(e)
    out["engines"] = engines
    weights = [sum(e.get("queries", e["served"]) for e in r["engines"]) for r in rows]
    if sum(weights):
        out["hit_rate"] = sum(r["hit_rate"] * w for r, w in zip(rows, weights, strict=True)) / sum(
            weights
        )
    out["errors"] = sum(r["errors"] for r in rows)
    out["rounds_rps"] = [r["rps"] for r in rows]
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "kv_blocks": kv_blocks(args),
        "peer_versions": peer_versions(args.peers, args.routers),
        "runs": [],
    }
    started = time.perf_counter()
    for speeds in args.speeds:
        for name in args.workloads:
            wl = workload(name, args)
            rows: dict[str, list[dict[str, Any]]] = {r: [] for r in args.routers}
            for rnd in range(args.rounds):
                order = (
                    args.routers[rnd % len(args.routers) :]
                    + args.routers[: rnd % len(args.routers)]
                )
                for router_name in order:
                    # The same bodies for every router in a round.
                    row = await run_one(router_name, speeds, wl, args, seed=rnd + 1)
                    rows[router_name].append(row)
                    print(
                        f"  speeds {_fmt_speeds(speeds)} {name} {router_name}: "
                        f"{row['rps']:.1f} req/s, TTFT p50 {row['ttft_p50_ms']:.0f} "
                        f"p99 {row['ttft_p99_ms']:.0f} ms, hit {row['hit_rate']:.2f}, "
                        f"shares {[round(e['share'], 2) for e in row['engines']]}, "
                        f"errors {row['errors']}, router CPU {row['cpu_us']:.0f} µs/req, "
                        f"load {row['load_after']:.1f}",
                        flush=True,
                    )
                    print("    " + _fmt_tail(row), flush=True)
            results["runs"].append(
                {
                    "speeds": list(speeds),
                    "workload": name,
                    "tenants": wl.tenants,
                    "rows": {r: _mean_row(v) for r, v in rows.items()},
                    "all": rows,
                }
            )
    results["seconds"] = time.perf_counter() - started
    results["load_end"] = os.getloadavg()
    return results


# report ---------------------------------------------------------------------------------


def _fmt_tail(row: dict[str, Any]) -> str:
    """One line: where the slowest first tokens' time went (and the router's own queue)."""
    tail = row.get("tail") or {}
    parts = []
    for name in ("tail", "all"):
        t = tail.get(name)
        if t:
            parts.append(
                f"{name}: n {t['n']} TTFT {t['ttft_ms']:.0f} = engine {t['engine_ttft_ms']:.0f} "
                f"(queued {t['engine_queued_ms']:.0f}) + outside {t['outside_engine_ms']:.0f} ms, "
                f"cold {t['cold']:.2f}, step prefill {t['step_prefill_tokens']:.0f} tok"
            )
    if tail:
        parts.append(f"cold requests {tail['cold_requests']} {tail['cold_by_engine']}")
    g = row.get("gpufleet")
    if g:
        extra = {k: g[k] for k in ("affine", "by_load", "placed") if k in g}
        parts.append(
            f"router queue mean {g.get('queue_wait_mean_ms', 0.0):.1f} ms "
            f"p99(window) {g.get('queue_wait_p99_ms', 0.0):.1f} ms, caps {g['caps']}, {extra}"
        )
    return " | ".join(parts)


def _fmt_speeds(speeds: Sequence[float]) -> str:
    return ",".join(f"{s:g}" for s in speeds)


_WHO = {"noprefix": "every request a system prompt of its own", "onetenant": "{} tenant"}


def report(results: dict[str, Any]) -> str:
    """Markdown tables of ``results``, then the targets."""
    out: list[str] = []
    for run in results["runs"]:
        speeds = run["speeds"]
        out += [
            f"**Engines {_fmt_speeds(speeds)}, workload `{run['workload']}` "
            f"({_WHO.get(run['workload'], '{} tenants').format(run['tenants'])})**",
            "",
            "| router | requests/s | output tokens/s | TTFT p50 ms | TTFT p99 ms "
            "| engines' TTFT mean ms | e2e p50 ms | e2e p99 ms | cache hit rate "
            "| share per engine | busiest engine's share | hit rate per engine "
            "| router CPU µs/request | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- "
            "| ---: | ---: |",
        ]
        for name, row in run["rows"].items():
            shares = " / ".join(f"{e['share']:.2f}" for e in row["engines"])
            rates = " / ".join(
                "—" if not e["served"] or e["hit_rate"] is None else f"{e['hit_rate']:.2f}"
                for e in row["engines"]
            )
            rps = f"{row['rps']:.1f}"
            if len(row.get("rounds_rps", [])) > 1:
                rps += " (" + ", ".join(f"{x:.1f}" for x in row["rounds_rps"]) + ")"
            out.append(
                f"| {name} | {rps} | {row['tokens_per_s']:.0f} | {row['ttft_p50_ms']:.0f} "
                f"| {row['ttft_p99_ms']:.0f} | {row.get('engine_ttft_mean_ms', math.nan):.0f} "
                f"| {row['e2e_p50_ms']:.0f} | {row['e2e_p99_ms']:.0f} "
                f"| {row['hit_rate']:.2f} | {shares} | {row['busiest_share']:.2f} | {rates} "
                f"| {row['cpu_us']:.0f} "
                f"| {row['errors']} |"
            )
        out.append("")
    verdicts = targets(results)
    if verdicts:
        out += ["| target | figures | verdict |", "| --- | --- | --- |"]
        out += [f"| {t} | {f} | {v} |" for t, f, v in verdicts]
        out.append("")
    return "\n".join(out)


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Issue 11's targets, for gpufleet with its defaults, where the runs have the figures."""
    out = []
    for run in results["runs"]:
        rows = run["rows"]
        g = rows.get("gpufleet")
        if g is None:
            continue
        speeds = run["speeds"]
        where = f"{_fmt_speeds(speeds)}, {run['workload']}"
        s = rows.get("sglang-cache_aware")
        equal = len(set(speeds)) == 1
        if s is not None and run["workload"] == "shared" and equal:
            ok = g["rps"] >= s["rps"] and g["ttft_p99_ms"] <= s["ttft_p99_ms"]
            out.append(
                (
                    f"{where}: ≥ SGLang gateway's throughput, TTFT p99 no worse",
                    f"{g['rps']:.1f} vs {s['rps']:.1f} req/s; "
                    f"{g['ttft_p99_ms']:.0f} vs {s['ttft_p99_ms']:.0f} ms",
                    "met" if ok else "**missed**",
                )
            )
        if s is not None and run["workload"] == "shared" and not equal:
            ratio = g["rps"] / s["rps"] if s["rps"] else math.inf
            out.append(
                (
                    f"{where}: ≥ 1.5 × SGLang gateway's throughput",
                    f"{g['rps']:.1f} vs {s['rps']:.1f} req/s = {ratio:.2f}×",
                    "met" if ratio >= 1.5 else "**missed**",
                )
            )
        v = rows.get("vllm-round_robin")
        if v is not None:
            ok = g["rps"] >= v["rps"]
            out.append(
                (
                    f"{where}: ≥ vLLM router round-robin",
                    f"{g['rps']:.1f} vs {v['rps']:.1f} req/s",
                    "met" if ok else "**missed**",
                )
            )
    return out


def machine() -> str:
    """One line about this machine."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{model or platform.processor()}, {os.cpu_count()} CPU cores, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the start"
    )


def peer_versions(peers: Path, routers: Sequence[str]) -> dict[str, str]:
    """The installed versions of the peers' packages (``pip show`` in their venv)."""
    wanted = {"sglang-router" for r in routers if r.startswith("sglang-")} | {
        "vllm-router" for r in routers if r.startswith("vllm-")
    }
    out = {}
    for pkg in sorted(wanted):
        try:
            text = subprocess.run(
                [str(peers / "bin" / "python"), "-m", "pip", "show", pkg],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout
        except OSError as exc:
            out[pkg] = f"not runnable: {exc}"
            continue
        version = next(
            (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Version:")),
            "not installed",
        )
        out[pkg] = version
    return out


def _speeds(value: str) -> list[float]:
    speeds = [float(s) for s in value.split(",") if s.strip()]
    if not speeds or any(s <= 0 for s in speeds):
        raise argparse.ArgumentTypeError(f"speeds must be positive numbers, got {value!r}")
    return speeds


def _list(known: Sequence[str] | None) -> Any:
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if known is not None and set(items) - set(known):
            raise argparse.ArgumentTypeError(f"unknown {sorted(set(items) - set(known))}")
        return items

    return parse


def _source(value: str) -> tuple[str, str]:
    label, sep, src = value.partition("=")
    if not sep or not (Path(src) / "gpufleet" / "__init__.py").exists():
        raise argparse.ArgumentTypeError(f"want LABEL=SRC with SRC/gpufleet/, got {value!r}")
    return label, str(Path(src).resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--system-tokens", type=int, default=1500)
    parser.add_argument("--user-tokens", type=int, default=60, help="mean; each ±25%%")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--requests", type=int, default=800, help="measured, per run")
    parser.add_argument("--warmup", type=int, default=144, help="requests before measuring")
    parser.add_argument(
        "--speeds",
        type=_speeds,
        action="append",
        help="engine speeds of one fleet, e.g. 1,1,1,0.25 (repeat for more; default 1,1,1,1)",
    )
    parser.add_argument(
        "--workloads", type=_list(WORKLOADS), default=["shared"], help=", ".join(WORKLOADS)
    )
    parser.add_argument(
        "--routers",
        type=_list(None),
        default=list(DEFAULT_ROUTERS),
        help="gpufleet, sglang-POLICY, vllm-POLICY, or a --gpufleet LABEL",
    )
    parser.add_argument(
        "--gpufleet",
        type=_source,
        action="append",
        default=[],
        metavar="LABEL=SRC",
        help="a gpufleet router from source tree SRC (holding gpufleet/), named LABEL",
    )
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"), help="peers' venv")
    parser.add_argument("--kv-fraction", type=float, default=0.5)
    parser.add_argument("--kv-blocks", type=int, default=0, help="per engine; 0: --kv-fraction")
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument("--max-running", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--engine-url",
        action="append",
        default=[],
        metavar="URL",
        help="run against these engines (real vLLM or SGLang ones, started already) instead "
        "of fresh simulated ones; their prefix caches are reset before each router's run "
        "(vLLM needs VLLM_SERVER_DEV_MODE=1 for that); --speeds only labels the table",
    )
    parser.add_argument("--model", default="sim-llm", help="the model named in the bodies")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument(
        "--from-json", type=Path, help="run nothing: print the tables of a --json file again"
    )
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        for run in results["runs"]:
            run["rows"] = {r: _mean_row(v) for r, v in run["all"].items()}
        print(report(results))
        return
    MODEL[0] = args.model
    args.speeds = args.speeds or [[1.0] * (len(args.engine_url) or 4)]
    if args.engine_url and any(len(sp) != len(args.engine_url) for sp in args.speeds):
        parser.error("with --engine-url, --speeds needs one entry per engine")
    args.gpufleet = dict(args.gpufleet)
    for name in args.routers:
        if name != "gpufleet" and name not in args.gpufleet:
            if not name.startswith(("sglang-", "vllm-")):
                parser.error(f"unknown router {name!r}")
            exe = "smg" if name.startswith("sglang-") else "vllm-router"
            if not (args.peers / "bin" / exe).exists():
                parser.error(f"{args.peers}/bin/{exe} is missing (see the docstring)")
    try:
        import uvloop

        results = uvloop.run(main_async(args))
    except ImportError:
        results = asyncio.run(main_async(args))
    print()
    print(f"machine: {results['machine']}; took {results['seconds']:.0f}s; ")
    print(f"engines: KV cache {results['kv_blocks']} blocks of {args.block_tokens} tokens each")
    print(f"peers: {results['peer_versions']}; load at the end {results['load_end']}")
    print()
    print(report(results))
    for run in results["runs"][:1]:
        for name, row in run["rows"].items():
            print(f"{name}: {' '.join(row['cmd'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
