"""Honest, bounded retries and strict answers (issue 12), with real processes.

A request lost after it was sent is re-run only where that is harmless; a full fleet is
not hammered; a broken stream says so; ambiguous framing never reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from gpufleet.testing import ServerProcess, run_router, run_worker
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import get_json, wait_for, wait_state


async def _ready(router: ServerProcess, *upstreams: ServerProcess | str) -> None:
    for u in upstreams:
        url = u if isinstance(u, str) else u.url
        await wait_state(router.url, url, "ready", within=20)


async def _call(
    method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.request(method, url, json=json, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def test_a_lost_post_to_a_foreign_server_is_not_run_twice() -> None:
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream()) for _ in range(2)]
        router = stack.enter_context(run_router([u.url for u in ups], "--max-fails", "100"))
        await _ready(router, *ups)

        async def completed() -> int:
            return sum([int((await get_json(u.url + "/stats"))["completed"]) for u in ups])

        # POST, sent, then the connection closed without an answer: it may have run.
        status, headers, body = await _call("POST", router.url + "/drop?ms=100", json={})
        assert status == 502, body
        assert headers["X-Gpufleet-Attempts"] == "1"
        assert b"closed the connection" in body
        assert await completed() == 1
        # GET is idempotent: sent again once, elsewhere.
        status, headers, _ = await _call("GET", router.url + "/drop")
        assert (status, headers["X-Gpufleet-Attempts"]) == (502, "2")
        assert await completed() == 3
        stats = await get_json(router.url + "/stats")
        assert stats["totals"]["retries_by_reason"] == {"lost": 1}

    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream()) for _ in range(2)]
        router = stack.enter_context(
            run_router([u.url for u in ups], "--max-fails", "100", "--retry-lost")
        )
        await _ready(router, *ups)
        status, headers, _ = await _call("POST", router.url + "/drop", json={})
        assert (status, headers["X-Gpufleet-Attempts"]) == (502, "2")  # the operator allowed it


async def test_a_worker_killed_mid_batch_is_retried_once_elsewhere() -> None:
    slow = ("--model-arg", "base_ms=1500", "--max-batch-size", "1")
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(run_worker("synthetic", *slow)) for _ in range(2)]
        router = stack.enter_context(run_router([w.url for w in workers], "--max-fails", "100"))
        await _ready(router, *workers)
        call = asyncio.create_task(_call("POST", router.url + "/predict", json={"input": "x"}))

        async def running() -> ServerProcess | None:
            for w in workers:
                if (await get_json(w.url + "/stats"))["batches"] >= 1:
                    return w
            return None

        await wait_for(running, within=10, what="the batch running on a worker")
        victim = await running()
        assert victim is not None
        victim.kill()
        status, headers, body = await call
        assert status == 200, body
        assert headers["X-Gpufleet-Attempts"] == "2"
        survivor = next(w for w in workers if w is not victim)
        assert (await get_json(survivor.url + "/stats"))["served"] == 1
        stats = await get_json(router.url + "/stats")
        assert stats["totals"]["retries_by_reason"] == {"lost": 1}
        metrics = (await _call("GET", router.url + "/metrics"))[2].decode()
        assert 'gpufleet_router_retries_total{reason="lost"} 1.0' in metrics


async def test_a_full_fleet_is_not_hammered() -> None:
    small = ("--model-arg", "base_ms=100", "--max-batch-size", "4", "--max-queue", "4")
    n = 300
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(run_worker("synthetic", *small)) for _ in range(2)]
        # The router may send each worker far more than its queue holds.
        router = stack.enter_context(
            run_router([w.url for w in workers], "--max-outstanding", "64")
        )
        await _ready(router, *workers)
        results: list[tuple[int, str | None, int]] = []
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=n)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def one(i: int) -> None:
                async with session.post(
                    router.url + "/predict", json={"input": i}, headers={"X-Request-Timeout": "3"}
                ) as resp:
                    await resp.read()
                    results.append(
                        (
                            resp.status,
                            resp.headers.get("Retry-After"),
                            int(resp.headers["X-Gpufleet-Attempts"]),
                        )
                    )

            await asyncio.gather(*(one(i) for i in range(n)))
        statuses = Counter(s for s, _, _ in results)
        attempts = sum(a for _, _, a in results)
        rejected = sum([(await get_json(w.url + "/stats"))["rejected"] for w in workers])
        print(
            f"statuses {dict(statuses)}, attempts/request {attempts / n:.3f}, rejected {rejected}"
        )
        assert set(statuses) <= {200, 503, 504}, statuses
        assert statuses[200] > n / 3
        assert attempts / n <= 1.25
        # The header is honest: every refusal the workers made was an attempt it counted.
        assert rejected <= attempts - statuses[200]
        # Whoever is turned away is told when to come back.
        assert all(ra is not None for s, ra, _ in results if s == 503)


async def test_after_an_outage_a_healthy_worker_is_back_at_once() -> None:
    with (
        run_upstream() as upstream,
        run_router(
            [upstream.url],
            "--health-interval",
            "0.2",
            "--fail-timeout",
            "30",
            "--max-fails",
            "3",
        ) as router,
    ):
        await _ready(router, upstream)
        for _ in range(3):
            await _call("GET", router.url + "/status/500?fault=worker")
        ejected = time.monotonic()
        # (it may already be back: probes every 0.2 s)
        assert (await get_json(router.url + "/stats"))["workers"][0]["ejections"] == 1
        # Its probes pass and nothing else is ready: back well before the 30 s window.
        await wait_state(router.url, upstream.url, "ready", within=5)
        took = time.monotonic() - ejected
        print(f"readmitted after {took:.2f}s")
        assert took < 5
        status, _, _ = await _call("GET", router.url + "/echo")
        assert status == 200


async def _sse_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            yield event


async def test_a_stream_cut_by_a_dying_worker_ends_with_an_error_event() -> None:
    streamy = ("--model-arg", "stream_chunks=100", "--model-arg", "per_item_ms=50")
    with (
        run_worker("synthetic", *streamy) as worker,
        run_router([worker.url]) as router,
    ):
        await _ready(router, worker)
        events: list[bytes] = []
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.post(router.url + "/predict", json={"input": "x", "stream": True}) as resp,
        ):
            assert resp.status == 200
            async for event in _sse_lines(resp):
                events.append(event)
                if len(events) == 2:
                    worker.kill()
        assert len(events) > 2
        assert events[-1].startswith(b"event: error\ndata: "), events[-1]
        assert b"upstream_error" in events[-1]
        assert b'"code": "UpstreamError"' in events[-1]  # an ErrorCode, not a class name
        stats = await get_json(router.url + "/stats")
        assert stats["totals"]["broken_answers"] == 1
        log = router.log_path.read_text()
        assert log.count(" cut: ") == 1, log
        assert "Traceback" not in log


async def test_a_body_cut_by_a_dying_upstream_is_not_ended_as_complete() -> None:
    with run_upstream() as upstream, run_router([upstream.url]) as router:
        await _ready(router, upstream)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(router.url + "/big?mb=512") as resp,
        ):

            async def read_all() -> None:
                got = 0
                async for chunk in resp.content.iter_any():
                    got += len(chunk)
                    if got > 1 << 20 and upstream.proc.poll() is None:
                        os.kill(upstream.proc.pid, signal.SIGKILL)

            with pytest.raises(aiohttp.ClientPayloadError):
                await read_all()
        assert (await get_json(router.url + "/stats"))["totals"]["broken_answers"] == 1


# Hostile framing -------------------------------------------------------------------------

_ANSWERS = {
    b"/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokokok",
    b"/same-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"/te-and-length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    b"/status-underscore": b"HTTP/1.1 2_00 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/status-long": b"HTTP/1.1 99999 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/connection-named": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
        b"Connection: X-Up-Secret\r\nX-Up-Secret: 1\r\nX-Other: 2\r\n\r\nok"
    ),
}


#: What a router asks of an upstream on its own (probes, engine discovery), on its own
#: connections: not the proxy's.
_ROUTERS_OWN = frozenset({b"/health", b"/get_server_info", b"/info", b"/metrics"})


@contextlib.contextmanager
def _hostile_upstream() -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP/1.1 server answering the crafted bytes of ``_ANSWERS`` by path.

    It runs on a loop of its own in a thread: the router's start-up waits block this one.
    """
    connections: list[bytes] = []  # the first request path of each connection

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if first and path not in _ROUTERS_OWN:
                    connections.append(path)
                    first = False
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if path == b"/health":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif path not in _ANSWERS and not path.startswith(b"/echo"):
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                elif path.startswith(b"/echo"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head), head)
                    )
                else:
                    writer.write(_ANSWERS[path])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    started: queue.Queue[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]] = queue.Queue()

    async def main() -> None:
        stop = asyncio.Event()
        async with await asyncio.start_server(serve, "127.0.0.1", 0) as server:
            started.put((asyncio.get_running_loop(), stop, server.sockets[0].getsockname()[1]))
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    loop, stop, port = started.get(timeout=10)
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


async def test_ambiguous_framing_is_a_502_and_never_passed_on() -> None:
    with (
        _hostile_upstream() as (url, connections),
        run_router([url], "--max-fails", "100") as router,
    ):
        await _ready(router, url)
        for path in ("/two-lengths", "/same-lengths", "/te-and-length"):
            for _ in range(2):
                status, headers, body = await _call("GET", router.url + path)
                assert status == 502, (path, body)
                assert headers["X-Gpufleet-Attempts"] == "1"
                assert b"broken answer" in body
        for path in ("/status-underscore", "/status-long"):
            status, _, body = await _call("GET", router.url + path)
            assert status == 502, (path, body)
        # Each broken answer closed its connection: every request above needed a new one.
        before = len(connections)
        assert before == 8, connections
        for _ in range(3):
            assert (await _call("GET", router.url + "/ok"))[0] == 200
        assert len(connections) == before + 1


async def test_headers_named_in_connection_are_dropped_both_ways() -> None:
    with _hostile_upstream() as (url, _), run_router([url]) as router:
        await _ready(router, url)
        status, headers, _ = await _call("GET", router.url + "/connection-named")
        assert status == 200
        assert "X-Up-Secret" not in headers
        assert headers["X-Other"] == "2"
        # The request side, with two Connection headers (aiohttp would merge them).
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.sendall(
                b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Connection: keep-alive, X-Secret\r\nConnection: X-Two\r\n"
                b"X-Secret: a\r\nX-Two: b\r\nX-Kept: c\r\n\r\n"
            )
            answer = b""
            deadline = time.monotonic() + 10
            while b"X-Kept" not in answer and time.monotonic() < deadline:
                answer += sock.recv(65536)
        seen = answer.split(b"\r\n\r\n", 1)[1].lower()
        assert b"x-kept: c" in seen
        assert b"x-secret" not in seen
        assert b"x-two" not in seen
