"""The router's upstream client against hostile upstreams on loopback (issue 12, item 6).

Every answer whose framing two parties could read differently is ``AnswerBroken`` and
its connection is closed: the next request goes out on a new connection. And the errors
say whether a request can have run: ``NotSent``, ``Lost`` or ``AnswerBroken``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from gpufleet.router.http1 import AnswerBroken, ConnectionPool, Lost, NotSent, UpstreamConnections

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
#: An answer (bytes), or a coroutine that writes whatever it likes.
Script = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Upstream:
    """A raw server: ``requests`` lists (connection, request) numbers as they were read."""

    url: str
    connections: int = 0
    requests: list[tuple[int, int]] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def pool(self) -> ConnectionPool:
        return UpstreamConnections(connect_timeout_s=2).pool(self.url)

    async def wait_closed(self, conn: int) -> None:
        """Until the server saw connection ``conn`` close."""
        async with asyncio.timeout(5):
            while conn not in self.closed:
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def upstream(first: bytes | Script, rest: bytes = OK) -> AsyncIterator[Upstream]:
    """A server answering its first request with ``first`` and every later one ``rest``."""
    up = Upstream("")

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = up.connections
        up.connections += 1
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                up.requests.append((conn, len(up.requests)))
                if len(up.requests) > 1:
                    writer.write(rest)
                elif isinstance(first, bytes):
                    writer.write(first)
                else:
                    await first(conn, reader, writer)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            up.closed.append(conn)
            up.changed.set()
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    up.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield up
    finally:
        server.close()


HEAD = b"GET /x HTTP/1.1\r\nHost: up\r\n\r\n"


async def _body(pool: ConnectionPool) -> bytes:
    resp = await pool.request(HEAD, None, no_body=False)
    return await resp.read()


async def _ok(pool: ConnectionPool) -> None:
    resp = await pool.request(HEAD, None, no_body=False)
    assert (resp.status, await resp.read()) == (200, b"ok")


_H = b"HTTP/1.1 200 OK\r\n"
BROKEN = {
    "duplicate Content-Length": _H + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "conflicting Content-Length": _H + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "Content-Length list": _H + b"Content-Length: 2, 2\r\n\r\nok",
    "Transfer-Encoding + Content-Length": (
        _H + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ),
    "Content-Length + Transfer-Encoding": (
        _H + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding gzip": _H + b"Transfer-Encoding: gzip\r\n\r\nabc",
    "Transfer-Encoding gzip, chunked": (
        _H + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding chunked twice": (
        _H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "status 2_00": b"HTTP/1.1 2_00 OK\r\nContent-Length: 2\r\n\r\nok",
    "status 99999": b"HTTP/1.1 99999 OK\r\nContent-Length: 2\r\n\r\nok",
    "status 20": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
    "status ' 200'": b"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\nok",
    "status 600": b"HTTP/1.1 600 OK\r\nContent-Length: 2\r\n\r\nok",
    "status 099": b"HTTP/1.1 099 OK\r\nContent-Length: 2\r\n\r\nok",
    "101 Switching Protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nxyz",
    "HTTP/2.0 status line": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "bad chunk size": _H + b"Transfer-Encoding: chunked\r\n\r\n2_0\r\nok\r\n0\r\n\r\n",
    "chunk not ended by CRLF": _H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nokX0\r\n\r\n",
    "header with a NUL": _H + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "header name with a space": _H + b"X A: b\r\nContent-Length: 2\r\n\r\nok",
    "too many headers": _H + b"X-H: v\r\n" * 101 + b"Content-Length: 2\r\n\r\nok",
    "head too large": _H + b"X-H: " + b"v" * (70 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("raw", BROKEN.values(), ids=BROKEN.keys())
async def test_ambiguous_framing_is_broken_and_the_connection_not_reused(raw: bytes) -> None:
    async with upstream(raw) as up:
        pool = up.pool()
        try:
            with pytest.raises(AnswerBroken):
                await _body(pool)
            await up.wait_closed(0)
            await _ok(pool)
            assert up.requests == [(0, 0), (1, 1)]
        finally:
            pool.close()


async def test_bytes_from_an_idle_connection_close_it() -> None:
    async def stray(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(OK)  # an answer to nothing

    async with upstream(stray) as up:
        pool = up.pool()
        try:
            await _ok(pool)
            await up.wait_closed(0)
            await _ok(pool)
            assert up.requests == [(0, 0), (1, 1)]
        finally:
            pool.close()


async def test_a_kept_connection_closed_while_idle_is_never_resent() -> None:
    async def answer_and_close(
        conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(OK)  # no Connection: close, as a server whose idle timeout then fires
        await writer.drain()
        writer.close()

    # The close seen before the next request: that one goes on a new connection.
    async with upstream(answer_and_close) as up:
        pool = up.pool()
        try:
            await _ok(pool)
            await up.wait_closed(0)
            await asyncio.sleep(0.05)
            await _ok(pool)
            assert up.requests == [(0, 0), (1, 1)]
        finally:
            pool.close()
    # The next request at once, racing the close: a new connection if the close was
    # seen in time, else Lost (reused); either way each request reached the server once.
    async with upstream(answer_and_close) as up:
        pool = up.pool()
        try:
            await _ok(pool)
            lost: Lost | None = None
            try:
                await _ok(pool)
            except Lost as exc:
                lost = exc
            assert lost is None or lost.reused
            assert len(up.requests) <= 2
            assert up.connections == len(up.requests)
        finally:
            pool.close()


async def test_refused_is_not_sent_and_closed_after_the_request_is_lost() -> None:
    async def hang_up(
        conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.close()

    async with upstream(hang_up) as up:
        pool = up.pool()
        try:
            with pytest.raises(Lost) as info:
                await pool.request(HEAD, None, no_body=False)
            assert not info.value.reused
            assert up.requests == [(0, 0)]
        finally:
            pool.close()
    with pytest.raises(NotSent):
        await pool.request(HEAD, None, no_body=False)


class Stop(Exception):
    """What a watchdog hands to ``Response.fail``."""


async def test_fail_during_the_head_wait_and_during_the_body() -> None:
    async def stall(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client goes

    async with upstream(stall) as up:
        pool = up.pool()
        try:
            resp = await pool.send(HEAD, None, no_body=False)
            asyncio.get_running_loop().call_later(0.05, resp.fail, Stop("first byte"))
            with pytest.raises(Stop):
                await resp.wait_head()
            assert not resp.has_head
            await up.wait_closed(0)
            await _ok(pool)
        finally:
            pool.close()

    async def part(conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
        await writer.drain()
        await reader.read()

    async with upstream(part) as up:
        pool = up.pool()
        try:
            resp = await pool.request(HEAD, None, no_body=False)
            chunks = resp.iter_chunks()
            assert await anext(chunks) == b"ok"
            received = resp.received
            asyncio.get_running_loop().call_later(0.05, resp.fail, Stop("idle"))
            with pytest.raises(Stop):
                await anext(chunks)
            assert resp.received == received
            await up.wait_closed(0)
        finally:
            pool.close()


async def test_keep_alive_timeout_1_is_honoured() -> None:
    answer = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok"
    async with upstream(answer, answer) as up:
        pool = up.pool()
        assert pool.keepalive_s == 4.0  # under uvicorn's 5 s
        try:
            await _ok(pool)
            await _ok(pool)  # at once: the same connection
            assert up.requests == [(0, 0), (0, 1)]
            await asyncio.sleep(0.6)  # past half of the upstream's 1 s: not reused
            await _ok(pool)
            assert up.requests[-1] == (1, 2)
        finally:
            pool.close()
