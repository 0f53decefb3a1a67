"""Helpers of the router's HTTP/1.1 client tests: a connection over an in-memory transport."""

from __future__ import annotations

import asyncio
from typing import Any

from gpufleet.router.http1 import ConnectionPool, Response
from gpufleet.router.http1.connection import _Connection

HEAD = b"GET / HTTP/1.1\r\nHost: up\r\n\r\n"


class FakeTransport:
    """Records writes and pauses; closing calls ``connection_lost`` soon, as asyncio does."""

    def __init__(self, protocol: _Connection) -> None:
        self.protocol = protocol
        self.written: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.paused = 0
        self.resumed = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, lines: tuple[bytes, ...]) -> None:
        self.written.extend(lines)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._end()

    def abort(self) -> None:
        self.aborted = True
        self._end()

    def _end(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Link:
    """One pool with one connection over a ``FakeTransport``."""

    def __init__(self) -> None:
        self.pool = ConnectionPool("http://up:80", connect_timeout_s=1)
        self.conn = _Connection(self.pool)
        self.transport = FakeTransport(self.conn)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.pool.put(self.conn)

    async def send(self, *, no_body: bool = False) -> Response:
        """A request on the kept connection (the test feeds the answer)."""
        resp = await self.pool.send(HEAD, None, no_body=no_body)
        assert resp._conn is self.conn, "the fake connection was not reused"
        return resp

    def feed(self, *pieces: bytes) -> None:
        """Answer bytes from the upstream, one read each."""
        for piece in pieces:
            if not self.transport.closing:
                self.conn.data_received(piece)

    @property
    def kept(self) -> bool:
        """The connection went back to the pool."""
        return self.pool.idle_count == 1 and not self.conn.closed


async def answer(*pieces: bytes, no_body: bool = False) -> tuple[Response, Link]:
    """The answer that ``pieces`` make, fed to a request sent on a fresh ``Link``."""
    link = Link()
    resp = await link.send(no_body=no_body)
    link.feed(*pieces)
    return resp, link
