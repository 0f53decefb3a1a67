"""Fixes from the router review: deadlines on uploads and streams, odd headers, HEAD."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp

from gpufleet.testing import run_router
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import TOKEN, get_json, wait_for, wait_state, worker_entry


async def _raw(url: str, data: bytes, *, within: float) -> bytes:
    """Send ``data`` on a fresh socket and read until the router closes it (or ``within``)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        async with asyncio.timeout(within):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
        return got
    finally:
        writer.close()


async def test_a_stalled_upload_gets_408_within_the_deadline() -> None:
    with run_upstream() as upstream, run_router([upstream.url], "--timeout", "1") as router:
        await wait_state(router.url, upstream.url, "ready", within=10)
        head = (
            b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        started = time.monotonic()
        answer = await _raw(router.url, head + b"0123456789", within=5)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"RequestTimeout" in answer
        assert took < 3.0, took
        totals = (await get_json(router.url + "/stats"))["totals"]
        assert totals["in_flight"] == 0
        assert totals["active"] == 0
        seen = await get_json(upstream.url + "/stats")
        assert seen["requests"] == 0  # nothing reached the upstream


async def _stream_until_cut(url: str) -> bytes:
    """Read an SSE answer until it ends or breaks; the bytes that came."""
    got = b""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        try:
            async with session.get(url) as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_any():
                    got += chunk
        except aiohttp.ClientError:
            pass
    return got


async def test_a_deadline_hit_mid_stream_does_not_count_against_the_upstream() -> None:
    with (
        run_upstream() as upstream,
        run_router([upstream.url], "--timeout", "0.6", "--health-interval", "0.2") as router,
    ):
        await wait_state(router.url, upstream.url, "ready", within=10)
        for _ in range(3):
            got = await _stream_until_cut(router.url + "/sse?n=10&interval_ms=150")
            assert got.startswith(b"data: 0 "), got  # the stream had begun
            assert b"data: 9 " not in got  # and was cut by the deadline
        entry = await worker_entry(router.url, upstream.url)
        assert entry["state"] == "ready", entry
        assert entry["errors"] == 0, entry
        totals = (await get_json(router.url + "/stats"))["totals"]
        assert totals["in_flight"] == 0
        # A deadline passed before any answer still counts.
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(router.url + "/slow?ms=2000") as resp:
                    assert resp.status == 504
        entry = await worker_entry(router.url, upstream.url)
        assert entry["state"] == "ejected", entry


async def test_odd_request_ids_are_replaced_and_odd_hosts_pass() -> None:
    # Any Host is served only when allowed (bound to loopback, only loopback names are).
    with run_upstream() as upstream, run_router([upstream.url], "--allowed-host", "*") as router:
        await wait_state(router.url, upstream.url, "ready", within=10)
        for rid in ("caf\xc3\xa9-\xe2\x82\xac".encode("latin-1"), b"x" * 201, b"a\tb"):
            answer = await _raw(
                router.url,
                b"GET /echo HTTP/1.1\r\nHost: h\xc3\xa9\xe2\x82\xac.example\r\n"
                b"X-Request-Id: " + rid + b"\r\nConnection: close\r\n\r\n",
                within=5,
            )
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), answer[:300]
            lines = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            minted = lines[b"X-Request-Id"]
            assert minted != rid, minted
            assert minted.isascii(), minted
            assert 0 < len(minted) <= 200, minted
            seen = json.loads(body)
            got = {k.lower(): v for k, v in seen["headers"].items()}
            assert got["x-request-id"] == minted.decode()
        # A printable ASCII id up to 200 characters is kept.
        kept = b"ok-" + b"z" * 197
        answer = await _raw(
            router.url,
            b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + kept + b"\r\n"
            b"Connection: close\r\n\r\n",
            within=5,
        )
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b"\r\nX-Request-Id: " + kept + b"\r\n" in answer


#: What a router asks of an upstream on its own (probes, engine discovery), on its own
#: connections: not the proxy's.
_ROUTERS_OWN = frozenset({b"/health", b"/get_server_info", b"/info", b"/metrics"})


@contextlib.contextmanager
def _bodiless_upstream(open_conns: set[int] | None = None) -> Iterator[str]:
    """A raw upstream on its own thread (run_router blocks this loop while it waits):
    200 on /health; HEAD /N: 200 with Content-Length N and no body; anything else: 304.
    ``open_conns`` holds the ids of open connections that carried more than probes."""
    opened = set() if open_conns is None else open_conns

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b" ", 2)
                if path not in _ROUTERS_OWN:
                    opened.add(id(writer))
                if path == b"/health":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif method == b"HEAD":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + path[1:] + b"\r\n\r\n")
                else:
                    writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            opened.discard(id(writer))
            writer.close()

    ports: queue.Queue[int] = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        async with server:
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=10)}"
    finally:
        stop.set()
        thread.join(10)


async def test_head_answers_keep_the_upstreams_content_length() -> None:
    with _bodiless_upstream() as url, run_router([url]) as router:
        await wait_state(router.url, url, "ready", within=10)
        async with aiohttp.ClientSession() as session:
            # Read whole (small) and streamed (large): the length goes on either way,
            # and the kept-alive connection still works after.
            for size in ("4242", "1000000", "4242"):
                async with session.head(f"{router.url}/{size}") as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Length"] == size
                    assert await resp.read() == b""
            async with session.get(router.url + "/page") as resp:
                assert resp.status == 304
                assert resp.headers["ETag"] == '"v1"'
                assert await resp.read() == b""


async def test_removing_a_worker_closes_its_kept_connections() -> None:
    open_conns: set[int] = set()
    with (
        _bodiless_upstream(open_conns) as url,
        run_router([url], "--admin-token", TOKEN) as router,
    ):
        await wait_state(router.url, url, "ready", within=10)
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(router.url + "/page") as resp:
                    assert resp.status == 304
            assert len(open_conns) == 1  # kept alive by the router for reuse
            entry = await worker_entry(router.url, url)
            async with session.delete(
                f"{router.url}/admin/workers/{entry['id']}",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                assert resp.status == 200

            async def closed() -> bool:
                return not open_conns

            await wait_for(closed, within=5, what="the removed worker's connections closed")
