"""Small HTTP upstreams for testing a router, run as real processes on 127.0.0.1.

``python -m gpufleet.testing.upstreams --port 0 --port-file F [--gpufleet]`` serves:

- ``GET /health``: 200, or whatever ``POST /control/health {"status": N}`` set;
- ``* /echo…``: JSON of what arrived (method, path, query, headers, body size, pid);
- ``GET /sse?n=N&interval_ms=MS``: N server-sent events, one every MS milliseconds;
- ``* /slow?ms=MS``: answers after MS milliseconds (counts requests the caller dropped);
- ``* /status/CODE[?fault=worker|request]``: answers CODE with a JSON error body (and
  ``X-Gpufleet-Fault`` when ``fault`` is given);
- ``* /overloaded``: a gpufleet worker's 503 ``WorkerOverloaded`` answer;
- ``* /drop?ms=MS``: reads the request, waits MS ms, closes the connection unanswered;
- ``GET /big?mb=N``: N MiB of bytes, streamed in 64 KiB chunks (a slow reader's load);
- ``GET /stats``: what this upstream saw (requests, cancelled, bytes, paths).

``--gpufleet`` makes it look like a gpufleet worker (``X-Gpufleet-Worker`` on every
answer, ``server`` and ``max_batch_size`` in /stats). ``run_upstream()`` starts one and
yields its URL, like ``run_worker()`` does for workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence

from aiohttp import web

from gpufleet import wire
from gpufleet._listener import write_port_file
from gpufleet.errors import ErrorCode
from gpufleet.testing._process import ServerProcess, run_module
from gpufleet.wire import FAULT_HEADER, SERVER_HEADER, WORKER_SERVER_NAME

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What a router asks of any upstream by itself (health, stats, engine discovery): not
#: counted as requests.
_PROBES = frozenset({"/health", "/stats", "/get_server_info", "/info", "/metrics"})


class _Seen:
    def __init__(self) -> None:
        self.requests = 0
        self.completed = 0
        self.cancelled = 0
        self.bytes_received = 0
        self.paths: Counter[str] = Counter()
        self.health_status = 200


def make_app(*, gpufleet: bool = False, max_batch_size: int = 8) -> web.Application:
    """The upstream application (also usable in-process)."""
    seen = _Seen()

    @web.middleware
    async def count(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path not in _PROBES and not request.path.startswith("/control"):
            seen.requests += 1
            seen.paths[request.path] += 1
        response = await handler(request)
        if gpufleet:
            response.headers[SERVER_HEADER] = "1"
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=seen.health_status)

    async def control_health(request: web.Request) -> web.Response:
        seen.health_status = int((await request.json())["status"])
        return web.json_response({"status": seen.health_status})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.bytes_received += len(body)
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body_bytes": len(body),
                "pid": os.getpid(),
            }
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "5"))
        interval = float(request.query.get("interval_ms", "200")) / 1000.0
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            await response.write(f"data: {i} {time.time():.6f}\n\n".encode())
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        seen.bytes_received += len(await request.read())
        try:
            await asyncio.sleep(float(request.query.get("ms", "100")) / 1000.0)
        except asyncio.CancelledError:
            seen.cancelled += 1
            raise
        seen.completed += 1
        return web.json_response({"slept_ms": request.query.get("ms", "100"), "pid": os.getpid()})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        fault = request.query.get("fault")
        headers = {FAULT_HEADER: fault} if fault else None
        return web.json_response(
            {"error": "Status", "message": str(code)}, status=code, headers=headers
        )

    async def overloaded(request: web.Request) -> web.Response:
        body = wire.error_payload(ErrorCode.WORKER_OVERLOADED, "queue full", retry_after_s=1.0)
        return web.Response(
            body=wire.encode(body),
            status=503,
            content_type=wire.JSON_CONTENT_TYPE,
            headers={"Retry-After": "1"},
        )

    async def drop(request: web.Request) -> web.StreamResponse:
        seen.bytes_received += len(await request.read())
        await asyncio.sleep(float(request.query.get("ms", "0")) / 1000.0)
        seen.completed += 1  # it "ran": the caller cannot know
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError  # nothing more to say on this connection

    async def big(request: web.Request) -> web.StreamResponse:
        chunk = b"x" * 65536
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        try:
            for _ in range(int(float(request.query.get("mb", "64")) * 16)):
                await response.write(chunk)
        except (asyncio.CancelledError, ConnectionError):
            seen.cancelled += 1
            raise
        await response.write_eof()
        seen.completed += 1
        return response

    async def stats(request: web.Request) -> web.Response:
        data: dict[str, object] = {
            "requests": seen.requests,
            "completed": seen.completed,
            "cancelled": seen.cancelled,
            "bytes_received": seen.bytes_received,
            "paths": dict(seen.paths),
            "pid": os.getpid(),
        }
        if gpufleet:
            data.update(server=WORKER_SERVER_NAME, max_batch_size=max_batch_size)
        return web.json_response(data)

    app = web.Application(middlewares=[count], client_max_size=1 << 30)
    app.router.add_get("/health", health)
    app.router.add_post("/control/health", control_health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/sse", sse)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/overloaded", overloaded)
    app.router.add_route("*", "/drop", drop)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    return app


async def _serve(args: argparse.Namespace) -> None:
    app = make_app(gpufleet=args.gpufleet, max_batch_size=args.max_batch_size)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    if args.port_file:
        await asyncio.to_thread(write_port_file, args.port_file, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Run one test upstream until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m gpufleet.testing.upstreams")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--gpufleet", action="store_true", help="act like a gpufleet worker")
    parser.add_argument("--max-batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve(args))
    except ImportError:
        asyncio.run(_serve(args))


@contextlib.contextmanager
def run_upstream(*args: str, port: int = 0, timeout: float = 30.0) -> Iterator[ServerProcess]:
    """Run a test upstream process on 127.0.0.1 (``port`` 0: a free one) until the block ends."""
    with run_module("gpufleet.testing.upstreams", args, port=port, timeout=timeout) as server:
        yield server


if __name__ == "__main__":
    main()


async def drive(
    url: str,
    n: int,
    concurrency: int,
    *,
    json_body: object = None,
    method: str = "POST",
    timeout_s: float = 60.0,
) -> list[tuple[int, str, float]]:
    """Send ``n`` requests to ``url`` with ``concurrency`` in flight (closed loop).

    Returns ``(status, X-Gpufleet-Upstream, seconds)`` per request, in completion order.
    Connection errors count as status 0.
    """
    import aiohttp

    results: list[tuple[int, str, float]] = []
    todo = iter(range(n))
    body = {"input": "x"} if json_body is None else json_body
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one_caller() -> None:
            for _ in todo:
                started = time.perf_counter()
                try:
                    async with session.request(method, url, json=body) as resp:
                        await resp.read()
                        upstream = resp.headers.get("X-Gpufleet-Upstream", "")
                        results.append((resp.status, upstream, time.perf_counter() - started))
                except aiohttp.ClientError:
                    results.append((0, "", time.perf_counter() - started))

        await asyncio.gather(*(one_caller() for _ in range(concurrency)))
    return results
