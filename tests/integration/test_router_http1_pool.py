"""The router's upstream client against raw servers on loopback: reuse, stale connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from gpufleet.router.http1 import ConnectionPool, Lost, NotSent, UpstreamConnections

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _server(serve: Serve) -> tuple[asyncio.Server, str, list[int]]:
    """A TCP server calling ``serve(reader, writer, connection_number)``."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await serve(reader, writer, len(connections) - 1)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def _head(client: UpstreamConnections, url: str) -> bytes:
    return b"GET /x HTTP/1.1\r\n" + client.pool(url).host_line + b"\r\n"


async def test_connections_are_reused() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(OK)
            await writer.drain()

    server, url, connections = await _server(serve)
    client = UpstreamConnections(connect_timeout_s=2)
    try:
        for _ in range(5):
            resp = await client.pool(url).request(_head(client, url), None, no_body=False)
            assert (resp.status, await resp.read()) == (200, b"ok")
        assert connections == [0]
    finally:
        client.close()
        server.close()


async def test_a_kept_connection_closed_unanswered_is_lost_and_not_resent() -> None:
    # Each connection answers one request, then reads the next and hangs up unanswered,
    # like a server whose idle timeout fired just as the request went out (or a worker
    # that died running it): the request may have run, so it is not sent again here.
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):  # the last one: at the end
            await _read_request(reader)

    server, url, connections = await _server(serve)
    client = UpstreamConnections(connect_timeout_s=2)
    pool = client.pool(url)
    try:
        resp = await pool.request(_head(client, url), None, no_body=False)
        assert (resp.status, await resp.read()) == (200, b"ok")
        with pytest.raises(Lost) as info:
            await pool.request(_head(client, url), None, no_body=False)
        assert info.value.reused
        assert connections == [0]  # no second try on a new connection
        resp = await pool.request(_head(client, url), None, no_body=False)
        assert (resp.status, await resp.read()) == (200, b"ok")
        assert connections == [0, 1]
    finally:
        client.close()
        server.close()


async def test_a_fresh_connection_closed_unanswered_is_lost_a_refused_one_not_sent() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)  # and hang up

    server, url, connections = await _server(serve)
    client = UpstreamConnections(connect_timeout_s=2)
    try:
        with pytest.raises(Lost) as info:
            await client.pool(url).request(_head(client, url), None, no_body=False)
        assert not info.value.reused
        assert connections == [0]  # no second try on a new connection
    finally:
        client.close()
        server.close()
        await server.wait_closed()
    with pytest.raises(NotSent):  # nothing listens there any more
        await UpstreamConnections(connect_timeout_s=2).pool(url).request(b"", None, no_body=False)


async def test_a_cancelled_wait_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)
        await reader.read()  # returns at EOF: the client went away
        closed.set()

    server, url, _ = await _server(serve)
    client = UpstreamConnections(connect_timeout_s=2)
    try:
        task = asyncio.create_task(
            client.pool(url).request(_head(client, url), None, no_body=False)
        )
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            await closed.wait()
    finally:
        client.close()
        server.close()


async def _keep_alive_server() -> tuple[asyncio.Server, str, list[int], list[int]]:
    """Answers OK to each request; ``gone`` lists the connections the client closed."""
    gone: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            try:
                request = await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                gone.append(n)
                return
            if request.startswith(b"GET /slow "):
                await asyncio.sleep(0.3)
            writer.write(OK)
            await writer.drain()

    server, url, connections = await _server(serve)
    return server, url, connections, gone


async def _wait_until(check: Callable[[], bool]) -> None:
    for _ in range(250):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not true after 5 s")


async def test_a_sweep_closes_only_connections_idle_past_the_keep_alive() -> None:
    server, url, connections, gone = await _keep_alive_server()
    now = [1000.0]
    pool = ConnectionPool(url, connect_timeout_s=2, keepalive_s=30, clock=lambda: now[0])
    head = b"GET /x HTTP/1.1\r\n" + pool.host_line + b"\r\n"
    try:
        # Two connections at once, both kept; one used again 20 s later.
        first, second = await asyncio.gather(
            pool.request(head, None, no_body=False), pool.request(head, None, no_body=False)
        )
        assert [await first.read(), await second.read()] == [b"ok", b"ok"]
        assert pool.idle_count == 2
        now[0] += 20
        resp = await pool.request(head, None, no_body=False)
        assert await resp.read() == b"ok"
        now[0] += 15  # one idle 35 s, the other 15 s
        assert pool.sweep() == 1
        assert pool.idle_count == 1
        await _wait_until(lambda: len(gone) == 1)
        now[0] += 20
        assert pool.sweep() == 1
        await _wait_until(lambda: len(gone) == 2)
        assert len(connections) == 2
    finally:
        pool.close()
        server.close()


async def test_a_retired_pool_closes_idle_connections_now_and_busy_ones_when_done() -> None:
    server, url, _connections, gone = await _keep_alive_server()
    client = UpstreamConnections(connect_timeout_s=2)
    pool = client.pool(url)
    head = _head(client, url)
    try:
        slow = head.replace(b"GET /x ", b"GET /slow ", 1)
        busy = asyncio.create_task(pool.request(slow, None, no_body=False))
        await asyncio.sleep(0.05)
        idle = await pool.request(head, None, no_body=False)  # a second connection
        assert await idle.read() == b"ok"
        assert pool.idle_count == 1
        client.discard(url)
        assert pool.retired
        await _wait_until(lambda: len(gone) == 1)
        assert client.pool(url) is not pool  # a new pool if the URL comes back
        assert await (await busy).read() == b"ok"
        await _wait_until(lambda: len(gone) == 2)
        assert pool.idle_count == 0
    finally:
        client.close()
        server.close()
