"""The router's cost and balance, measured in one run on loopback (a script, not a test).

Run (about five minutes on 2 CPU cores; ``--parts`` picks some)::

    .venv/bin/python benchmarks/router.py --json router.json
    .venv/bin/python benchmarks/router.py --parts proxy,nginx,sse --rounds 5

Five parts, each with real processes on 127.0.0.1 and the load generated here (aiohttp
on uvloop when installed). CPU is a process's run time from ``/proc/<pid>/schedstat``
before and after a phase, divided by its requests (or events).

1. ``proxy``: near-zero-cost echo upstreams (``gpufleet.testing.upstreams``, ``GET
   /echo``) driven straight, through ``gpufleet router``, through nginx (part ``nginx``:
   one worker process, keep-alive to the same upstreams, its master's and worker's CPU
   summed) and, for scale, a bare aiohttp server answering a fixed body, at
   ``--concurrency`` (64) in flight, interleaved in ``--rounds`` rounds (each in another
   order; median kept): requests/s, p50/p99 and CPU per request; also a bare server on
   httptools without a framework, for what a leaner server side could cost. ``--router
   [LABEL=]SRC`` (repeatable) runs routers from other source trees (a ``git archive`` of
   another commit) in the same rounds, for an A/B; ``--profile FILE`` samples the first
   router with py-spy (``pip install py-spy``) for one more round.
2. ``sse``: one upstream sending ``--sse-events`` server-sent events back to back on each
   of ``--sse-streams`` streams (``GET /sse?interval_ms=0``), read straight and through
   the router (and nginx), in the same rounds: events/s and CPU per event.
3. ``instr`` (not run by default; needs valgrind): each router build (``--router``) under
   callgrind at ``--concurrency`` in flight: user-space instructions per proxied request.
   Unlike CPU time they hardly move with the machine's load, so a 1-2% change shows.
4. ``mixed``: 4 ``synthetic`` workers serving one request at a time in 40 ms, one of them
   4x slower (160 ms); ideal capacity 3/0.04 + 1/0.16 = 81.25 req/s. Per policy
   (round-robin, least-outstanding, capacity; no weights): a closed loop at concurrency
   16 and an open loop (Poisson arrivals) at 80% of the ideal; throughput as a fraction
   of the ideal and p99 latency. Once with the default per-upstream cap (a gpufleet
   worker's batch size: 1 here) and once with ``--max-outstanding 16`` (caps out of the
   way, as behind a plain balancer).
5. ``scaling``: N = 1, 2, 4, 8 ``synthetic`` workers of 10 ms per request behind the
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
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet.testing import ServerProcess, free_port, run_router, run_worker
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


#: The same fixed answer from a bare server on httptools (llhttp) and uvloop, with no web
#: framework: what a server side without aiohttp's could cost (keep-alive, no pipelining).
_BARE_HTTPTOOLS = """
import asyncio, httptools
try:
    import uvloop
except ImportError:
    uvloop = None
BODY = b'{"ok": true}'
ANSWER = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
          b"Content-Length: %d\\r\\n\\r\\n" % len(BODY)) + BODY
class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
    def on_message_complete(self):
        self.transport.write(ANSWER)
        if not self.parser.should_keep_alive():
            self.transport.close()
async def main():
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
(uvloop.run if uvloop else asyncio.run)(main())
"""


@contextlib.contextmanager
def bare_server(source: str = _BARE_SERVER) -> Iterator[tuple[int, str]]:
    """Run ``_BARE_SERVER`` (or another one-file server); yield its pid and URL."""
    proc = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield proc.pid, f"http://127.0.0.1:{port}/echo"
    finally:
        proc.kill()
        proc.wait()


#: nginx in front of the same upstreams, set up as ``gpufleet export nginx`` writes it
#: (keep-alive to the upstreams, no buffering), plus the headers the router adds too.
_NGINX_CONF = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream echo {{
        least_conn;
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $request_id;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


class Nginx:
    """A running nginx: its URL and the pids whose CPU it spends (master and workers)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url

    def pids(self) -> list[int]:
        """The master and its worker(s)."""
        return [self.proc.pid, *children(self.proc.pid)]


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def nginx_binary() -> str | None:
    """The nginx executable, if installed (``./scripts/system-deps`` installs Debian's)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@contextlib.contextmanager
def run_nginx(upstreams: Sequence[str]) -> Iterator[Nginx]:
    """nginx in the foreground on a free 127.0.0.1 port, with a throwaway prefix."""
    exe = nginx_binary()
    if exe is None:
        raise RuntimeError("nginx is not installed (./scripts/system-deps installs it)")
    prefix = Path(tempfile.mkdtemp(prefix="gpufleet-nginx-"))
    port = free_port()
    servers = "\n".join(f"        server {u.removeprefix('http://')};" for u in upstreams)
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(prefix=prefix, servers=servers, port=port))
    cmd = [exe, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not _answers(url + "/echo"):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {log}")
            time.sleep(0.05)
        yield Nginx(proc, url)
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: a fast shutdown
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(prefix, ignore_errors=True)


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)
    return False


def _pids(pid: int) -> Callable[[], list[int]]:
    return lambda: [pid]


def _cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


@contextlib.contextmanager
def routers(
    upstreams: Sequence[str], sources: Sequence[tuple[str, str]], *args: str
) -> Iterator[list[tuple[str, ServerProcess]]]:
    """One ``gpufleet router`` per ``(label, src dir)`` (``""``: the installed package)."""
    with contextlib.ExitStack() as stack:
        started = []
        for label, src in sources:
            env = {"PYTHONPATH": src} if src else None
            started.append((label, stack.enter_context(run_router(upstreams, *args, env=env))))
        yield started


async def proxy_cost(
    requests: int,
    concurrency: int,
    rounds: int,
    *,
    sources: Sequence[tuple[str, str]],
    nginx: bool,
    method: str = "GET",
    profile: Path | None = None,
) -> dict[str, Any]:
    """Echo upstreams straight, through the router(s), through nginx, and a bare server.

    All in the same rounds (each round in a different order; medians kept), with the CPU
    per request of the process(es) in between.
    """
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream()) for _ in range(2)]
        direct_urls = [u.url + "/echo" for u in ups]
        started = stack.enter_context(
            routers([u.url for u in ups], sources, "--max-outstanding", str(concurrency))
        )
        # name -> (urls, the pids whose CPU counts)
        paths: dict[str, tuple[list[str], Callable[[], list[int]]]] = {
            "direct": (direct_urls, list)
        }
        for label, router in started:
            paths[label] = ([router.url + "/echo"], _pids(router.pid))
        if nginx:
            front = stack.enter_context(run_nginx([u.url for u in ups]))
            paths["nginx"] = ([front.url + "/echo"], front.pids)
        bare_pid, bare_url = stack.enter_context(bare_server())
        paths["bare"] = ([bare_url], _pids(bare_pid))
        lean_pid, lean_url = stack.enter_context(bare_server(_BARE_HTTPTOOLS))
        paths["bare httptools"] = ([lean_url], _pids(lean_pid))
        for urls, _ in paths.values():  # warm: connections, learned rates
            await closed_loop(urls, 1000, concurrency, method=method)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
        names = list(paths)
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                urls, pids_of = paths[name]
                pids = pids_of()
                cpu0 = _cpu(pids)
                row = await closed_loop(urls, requests, concurrency, method=method)
                row["cpu_us"] = (_cpu(pids) - cpu0) / requests * 1e6
                rows[name].append(row)
            print(
                "  round "
                + ", ".join(
                    f"{n} {r[-1]['rps']:.0f}/s {r[-1]['cpu_us']:.0f} µs" for n, r in rows.items()
                ),
                flush=True,
            )
        if profile is not None:
            label, router = started[0]
            await profile_router(
                router.pid, [router.url + "/echo"], requests, concurrency, profile, method
            )
        # The bare server, one request every 10 ms (as a 10 ms worker paces a router):
        # each request now wakes an idle process, which costs CPU of its own.
        cpu0 = cpu_seconds(bare_pid)
        paced = await paced_loop(bare_url, requests // 20, 0.010)
        paced["cpu_us"] = (cpu_seconds(bare_pid) - cpu0) / (requests // 20) * 1e6
        # One request at a time: the CPU of waking up for each request shows here.
        single_direct = await closed_loop(direct_urls, requests // 5, 1, method=method)
        router = started[0][1]
        cpu0 = cpu_seconds(router.pid)
        single = await closed_loop([router.url + "/echo"], requests // 5, 1, method=method)
        single["cpu_us"] = (cpu_seconds(router.pid) - cpu0) / (requests // 5) * 1e6
    return {
        "median": {name: _median(r) for name, r in rows.items()},
        "routers": [label for label, _ in started],
        "bare_paced": paced,
        "direct_c1": single_direct,
        "router_c1": single,
        "rounds": rows,
    }


async def profile_router(
    pid: int, urls: list[str], requests: int, concurrency: int, out: Path, method: str
) -> None:
    """Sample the router with py-spy (``--native`` off, collapsed stacks) for one more round."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    cmd = [spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw", "-o", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    await asyncio.sleep(1.0)  # let it attach
    await closed_loop(urls, requests * 3, concurrency, method=method)
    proc.send_signal(signal.SIGINT)
    _, err = await proc.communicate()
    print(f"  py-spy: {out} ({err.decode(errors='replace').strip().splitlines()[-1:]})")


#: Where a sample of the router's main thread was, by its innermost frame (first match).
#: A C call (a socket write, a timer) shows as the Python line that made it.
_PLACES = (
    ("http1.py: write the request (send syscall)", "ConnectionPool.send (gpufleet/router/http1/"),
    ("aiohttp: write the answer (send syscall)", "StreamWriter._writelines (aiohttp/"),
    ("event loop in C (epoll, recv, uvloop)", "Runner.run (asyncio/runners"),
    ("timers: call_later/cancel of _Watch", "_Watch."),
    ("timers: asyncio.timeout", "asyncio/timeouts.py"),
    ("http1.py (Python, llhttp callbacks)", "gpufleet/router/http1/"),
    # proxy.py was split (issue 15): one attempt and the relay count as the proxy still.
    ("proxy.py (Python)", "gpufleet/router/proxy.py"),
    ("proxy.py (Python)", "gpufleet/router/attempt.py"),
    ("proxy.py (Python)", "gpufleet/router/relay.py"),
    ("router, other (upstream, policy, admission, budget)", "gpufleet/router/"),
    ("aiohttp server side (Python)", "aiohttp/"),
)


def profile_places(path: Path) -> list[tuple[str, float]]:
    """Shares of the router's main-thread samples (py-spy ``--format raw``) per place.

    Threads waiting in a thread pool's queue are left out: py-spy counts them as running,
    but ``/proc/<pid>/task/*/schedstat`` shows that they use no CPU.
    """
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or "_worker (concurrent/futures/thread.py" in stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        place = next((name for name, mark in _PLACES if mark in leaf), "other")
        counts[place] = counts.get(place, 0) + int(n)
        total += int(n)
    return sorted(((k, v / max(1, total)) for k, v in counts.items()), key=lambda kv: -kv[1])


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(r[k] for r in rows) for k in keys}


# 2. SSE events per second ---------------------------------------------------------------


async def sse_streams(url: str, streams: int, events: int) -> dict[str, Any]:
    """``streams`` concurrent event streams of ``events`` events each, read to the end."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    counts: list[int] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            async with session.get(url) as resp:
                counts.append((await resp.read()).count(b"\n\n"))

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(streams)))
        elapsed = time.perf_counter() - started
    total = sum(counts)
    return {
        "events": total,
        "missing": streams * events - total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
    }


async def sse_rate(
    streams: int,
    events: int,
    rounds: int,
    *,
    sources: Sequence[tuple[str, str]],
    nginx: bool,
) -> dict[str, Any]:
    """One upstream sending events back to back (``/sse?interval_ms=0``), straight vs
    through the router(s) (and nginx): events/s and CPU per event of the one in between."""
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(run_upstream())
        query = f"/sse?n={events}&interval_ms=0"
        started = stack.enter_context(
            routers([up.url], sources, "--max-outstanding", str(2 * streams))
        )
        paths: dict[str, tuple[str, Callable[[], list[int]]]] = {"direct": (up.url + query, list)}
        for label, router in started:
            paths[label] = (router.url + query, _pids(router.pid))
        if nginx:
            front = stack.enter_context(run_nginx([up.url]))
            paths["nginx"] = (front.url + query, front.pids)
        for url, _ in paths.values():
            await sse_streams(url, streams, events // 10)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
        names = list(paths)
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                url, pids_of = paths[name]
                pids = pids_of()
                cpu0, up0 = _cpu(pids), cpu_seconds(up.pid)
                row = await sse_streams(url, streams, events)
                row["cpu_us"] = (_cpu(pids) - cpu0) / max(1, row["events"]) * 1e6
                row["upstream_cpu_us"] = (cpu_seconds(up.pid) - up0) / max(1, row["events"]) * 1e6
                rows[name].append(row)
            print(
                "  round "
                + ", ".join(
                    f"{n} {r[-1]['events_per_s']:.0f}/s {r[-1]['cpu_us']:.2f} µs"
                    for n, r in rows.items()
                ),
                flush=True,
            )
    return {"median": {name: _median(r) for name, r in rows.items()}, "rounds": rows}


# 3. instructions per request (callgrind) --------------------------------------------------


@contextlib.contextmanager
def callgrind_router(
    upstreams: Sequence[str], src: str, workdir: Path, *args: str
) -> Iterator[tuple[int, str, Path]]:
    """``gpufleet router`` under valgrind's callgrind, instrumentation off until asked."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": src} if src else None
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={workdir}/callgrind.out",
        sys.executable,
        "-m",
        "gpufleet",
        "router",
        *[a for u in upstreams for a in ("--worker", u)],
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with (workdir / "log").open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while not _answers(url + "/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"router under valgrind did not start: {workdir}/log")
            time.sleep(0.5)
        yield proc.pid, url, workdir
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def instructions(
    sources: Sequence[tuple[str, str]], requests: int, concurrency: int, method: str
) -> dict[str, Any]:
    """User-space instructions per proxied request of each router build (callgrind).

    Unlike CPU time they do not move with the machine's load, so a change of 1-2% shows.
    Two passes (the builds in turn, then in reverse order), two measurements each.
    """
    rows: dict[str, list[float]] = {label: [] for label, _ in sources}
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream()) for _ in range(2)]
        workdir = Path(tempfile.mkdtemp(prefix="gpufleet-callgrind-"))
        stack.callback(shutil.rmtree, workdir, True)
        for order in (list(sources), list(reversed(sources))):
            for label, src in order:
                await asyncio.to_thread(_callgrind_clear, workdir)
                with callgrind_router(
                    [u.url for u in ups], src, workdir, "--max-outstanding", str(concurrency)
                ) as (pid, url, _):
                    urls = [url + "/echo"]
                    await closed_loop(urls, 300, concurrency, method=method)
                    await _callgrind_control(pid, "-i", "on")
                    await closed_loop(urls, 300, concurrency, method=method)
                    for _ in range(2):
                        await _callgrind_control(pid, "-z")
                        await closed_loop(urls, requests, concurrency, method=method)
                        await _callgrind_control(pid, "-d")
                        total = await asyncio.to_thread(_callgrind_total, workdir)
                        rows[label].append(total / requests)
                print(f"  {label}: {[round(x / 1000, 1) for x in rows[label]]}k", flush=True)
    first = statistics.median(rows[sources[0][0]])
    return {
        "method": method,
        "median": {label: statistics.median(r) for label, r in rows.items()},
        "ratio": {label: statistics.median(r) / first for label, r in rows.items()},
        "runs": rows,
    }


def _callgrind_clear(workdir: Path) -> None:
    for old in workdir.glob("callgrind.out*"):
        old.unlink()


def _callgrind_total(workdir: Path) -> int:
    """The instructions counted in the latest dump."""
    dump = max(workdir.glob("callgrind.out.*"), key=os.path.getmtime)
    found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(found.group(1))


async def _callgrind_control(pid: int, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, str(pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await proc.wait()


# 4. mixed fleet -------------------------------------------------------------------------

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


# 5. scaling -----------------------------------------------------------------------------

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
    if "proxy" in results:
        out += _proxy_report(results["proxy"], results["args"]["concurrency"])
    if "sse" in results:
        out += _sse_report(results["sse"], results["args"])
    if "profile" in results:
        out += ["| where the router's main thread was (py-spy samples) | share |", "| --- | ---: |"]
        out += [f"| {place} | {share:.1%} |" for place, share in results["profile"]]
        out.append("")
    if "instr" in results:
        out += _instr_report(results["instr"])
    if "mixed" in results:
        out += [
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
        out.append("")
    if "scaling" in results:
        out += [
            "| workers | cap | requests/s | / (N × one worker) | N straight, requests/s "
            "| / N straight | p50 ms | p99 ms | router CPU µs/request |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in results["scaling"]:
            if row.get("single"):
                out.append(
                    f"| 1, straight | — | {row['rps']:.1f} | 1.000 | — | — | "
                    f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | — |"
                )
            else:
                out.append(
                    f"| {row['workers']} | {row['cap']} | {row['rps']:.1f} | "
                    f"{row['efficiency']:.3f} | {row['straight_rps']:.1f} | "
                    f"{row['of_straight']:.3f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                    f"{row['router_cpu_us']:.0f} |"
                )
    return "\n".join(out)


_WHAT = {
    "direct": "straight to the echo upstreams",
    "nginx": "through nginx (CPU: master + worker)",
    "bare": "bare aiohttp server, fixed answer (CPU: that server's)",
    "bare httptools": "bare httptools server, fixed answer (CPU: that server's)",
}


def _proxy_report(p: dict[str, Any], c: int) -> list[str]:
    med = p["median"]
    out = [
        "| path | in flight | requests/s | p50 ms | p99 ms | CPU µs/request (rounds) "
        "| / nginx's | / bare server's |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in med.items():
        what = _WHAT.get(name, f"through {name}")
        cpu = "—"
        ratios = "— | —"
        if name != "direct":
            each = ", ".join(f"{r['cpu_us']:.0f}" for r in p["rounds"][name])
            cpu = f"{row['cpu_us']:.0f} ({each})"
            ratios = " | ".join(
                f"{row['cpu_us'] / med[k]['cpu_us']:.2f}" if k in med else "—"
                for k in ("nginx", "bare")
            )
        out.append(
            f"| {what} | {c} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {cpu} | {ratios} |"
        )
    paced, d1, r1 = p["bare_paced"], p["direct_c1"], p["router_c1"]
    out += [
        f"| bare aiohttp server, one request every 10 ms | 1 | 100 | {paced['p50_ms']:.2f} | "
        f"{paced['p99_ms']:.2f} | {paced['cpu_us']:.0f} | — | — |",
        f"| straight to the echo upstreams | 1 | {d1['rps']:.0f} | {d1['p50_ms']:.2f} | "
        f"{d1['p99_ms']:.2f} | — | — | — |",
        f"| through {p['routers'][0]} | 1 | {r1['rps']:.0f} | {r1['p50_ms']:.2f} | "
        f"{r1['p99_ms']:.2f} | {r1['cpu_us']:.0f} | — | — |",
        "",
    ]
    return out


def _instr_report(ins: dict[str, Any]) -> list[str]:
    out = [
        f"| router ({ins['method']}) | instructions/request (median) | runs (k) | / first |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, med in ins["median"].items():
        runs = ", ".join(f"{x / 1000:.0f}" for x in ins["runs"][label])
        out.append(f"| {label} | {med / 1000:.1f}k | {runs} | {ins['ratio'][label]:.3f} |")
    out.append("")
    return out


def _sse_report(s: dict[str, Any], args: dict[str, Any]) -> list[str]:
    med = s["median"]
    direct = med["direct"]["events_per_s"]
    out = [
        "| path | streams | events/s | / straight | CPU µs/event (rounds) "
        "| upstream CPU µs/event | events missing |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in med.items():
        cpu = "—"
        if name != "direct":
            each = ", ".join(f"{r['cpu_us']:.2f}" for r in s["rounds"][name])
            cpu = f"{row['cpu_us']:.2f} ({each})"
        what = "straight to the upstream" if name == "direct" else f"through {name}"
        out.append(
            f"| {what} | {args['sse_streams']} | {row['events_per_s']:.0f} | "
            f"{row['events_per_s'] / direct:.2f} | {cpu} | {row['upstream_cpu_us']:.2f} | "
            f"{sum(r['missing'] for r in s['rounds'][name])} |"
        )
    out.append("")
    return out


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


PARTS = ("proxy", "sse", "instr", "mixed", "scaling")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    started = time.perf_counter()
    parts = args.parts or ["proxy", "nginx", "sse", "mixed", "scaling"]
    nginx = "nginx" in parts
    if nginx and nginx_binary() is None:
        if args.parts:
            raise SystemExit("nginx is not installed (./scripts/system-deps installs it)")
        print("nginx is not installed: left out (./scripts/system-deps installs it)")
        nginx = False
    sources = args.router or [("router", "")]
    if "proxy" in parts:
        print(f"proxy cost at {args.concurrency} in flight ...", flush=True)
        results["proxy"] = await proxy_cost(
            args.requests,
            args.concurrency,
            args.rounds,
            sources=sources,
            nginx=nginx,
            method=args.method,
            profile=args.profile,
        )
        if args.profile is not None:
            results["profile"] = profile_places(args.profile)
    if "sse" in parts:
        print(f"SSE, {args.sse_streams} streams of {args.sse_events} events ...", flush=True)
        results["sse"] = await sse_rate(
            args.sse_streams, args.sse_events, args.rounds, sources=sources, nginx=nginx
        )
    if "instr" in parts:
        if shutil.which("valgrind") is None:
            raise SystemExit("part instr needs valgrind (apt-get install valgrind)")
        print("instructions per request under callgrind ...", flush=True)
        results["instr"] = await instructions(
            sources, args.instr_requests, args.concurrency, args.method
        )
    if "mixed" in parts:
        print("mixed fleet ...", flush=True)
        results["mixed"] = await mixed_fleet(args.policies, args.mixed_requests, args.open_seconds)
    if "scaling" in parts:
        print("scaling ...", flush=True)
        results["scaling"] = await scaling(args.sizes, args.scale_seconds)
    results["seconds"] = time.perf_counter() - started
    return results


def _parts(value: str) -> list[str]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    unknown = set(parts) - {*PARTS, "nginx"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {sorted(unknown)}; known: {PARTS}")
    return parts


def _router_source(value: str) -> tuple[str, str]:
    label, sep, src = value.partition("=")
    if not sep:
        label, src = f"router@{Path(value).resolve().parent.name}", value
    if not (Path(src) / "gpufleet" / "__init__.py").exists():
        raise argparse.ArgumentTypeError(f"{src} has no gpufleet package")
    return label, str(Path(src).resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts",
        type=_parts,
        help="comma-separated: proxy, nginx (in the proxy and sse parts), sse, instr, mixed, "
        "scaling (default: all but instr; nginx where installed)",
    )
    parser.add_argument("--requests", type=int, default=5000, help="proxy part, per round")
    parser.add_argument("--concurrency", type=int, default=64, help="proxy part")
    parser.add_argument("--rounds", type=int, default=3, help="proxy and sse parts")
    parser.add_argument(
        "--router",
        action="append",
        type=_router_source,
        metavar="[LABEL=]SRC",
        help="run the router from this source dir (holding gpufleet/), e.g. a `git archive` "
        "of another commit; repeat to compare side by side (default: the installed one)",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the (first) router for one more proxy round"
    )
    parser.add_argument(
        "--instr-requests", type=int, default=600, help="instr part, per measurement"
    )
    parser.add_argument("--method", default="GET", help="proxy and instr parts (GET, POST)")
    parser.add_argument("--sse-streams", type=int, default=16)
    parser.add_argument("--sse-events", type=int, default=10000, help="per stream")
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
