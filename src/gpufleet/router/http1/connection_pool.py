"""Keep-alive connections to upstreams: reused while fresh, closed when stale.

A connection idle for ``KEEPALIVE_S`` (or less, as the answer's ``Keep-Alive: timeout=N``
asks) is not reused: the upstream may be closing it. ``UpstreamConnections`` keeps one
``ConnectionPool`` per upstream URL.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Final

from yarl import URL

from gpufleet.router.http1.connection import _Connection
from gpufleet.router.http1.errors import NotSent
from gpufleet.router.http1.response import Response

#: How long an idle upstream connection is kept: under the 5 s after which uvicorn (and
#: so a gpufleet worker) closes it, so that a request rarely goes out on a connection the
#: upstream is closing. An answer's ``Keep-Alive: timeout=N`` shortens it.
KEEPALIVE_S: Final = 4.0


class ConnectionPool:
    """Keep-alive connections to one upstream (``scheme://host:port``)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        keepalive_s: float = KEEPALIVE_S,
        max_idle: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = URL(url)
        self.host = parsed.host or "127.0.0.1"
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parsed.scheme == "https" else None
        )
        default_port = parsed.port == (443 if parsed.scheme == "https" else 80)
        name = parsed.raw_host or self.host  # an international name in its ASCII (IDNA) form
        host_header = name if default_port else f"{name}:{self.port}"
        if ":" in name and not default_port:  # IPv6 literal
            host_header = f"[{name}]:{self.port}"
        #: The ``Host`` header line for requests to this upstream.
        self.host_line = f"Host: {host_header}\r\n".encode("latin-1")
        #: The path prefix of the upstream URL (requests' paths are appended to it).
        self.prefix = parsed.raw_path.rstrip("/").encode("latin-1")
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle
        self._clock = clock
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        #: True once the upstream is gone: connections close as their answers end.
        self.retired = False

    def put(self, conn: _Connection, keep_s: float | None = None) -> None:
        """Keep ``conn`` for the next request, for ``keepalive_s`` (or ``keep_s`` if less)."""
        limit = self.keepalive_s if keep_s is None else min(keep_s, self.keepalive_s)
        if self.retired or limit <= 0 or len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.expires = self._clock() + limit
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """``conn`` closed."""
        self._all.discard(conn)

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.closed or conn.expires <= now:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError as exc:
            raise NotSent(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise NotSent(f"connect to {self.host}:{self.port}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def send(self, head: bytes, body: bytes | None, *, no_body: bool) -> Response:
        """Write one request (``head`` ends with the blank line) on a kept or new connection.

        Returns at once; ``Response.wait_head`` waits for the answer. ``no_body``: the
        answer has no body whatever its head says (a HEAD request).

        Raises:
            NotSent: the request was not delivered (no connection, or it had closed).
        """
        conn = self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        transport = conn.transport
        if conn.closed or transport is None or transport.is_closing():
            raise NotSent(f"connection to {self.host}:{self.port} closed before the request")
        response = Response(conn, no_body, reused)
        conn.response = response
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        return response

    async def request(self, head: bytes, body: bytes | None, *, no_body: bool) -> Response:
        """``send``, then wait for the answer's head (see ``Response.wait_head``)."""
        response = await self.send(head, body, no_body=no_body)
        await response.wait_head()
        return response

    def sweep(self) -> int:
        """Close the idle connections kept past their time; how many were closed."""
        now = self._clock()
        keep: list[_Connection] = []
        closed = 0
        for conn in self._idle:
            if conn.closed or conn.expires <= now:
                conn.close()
                closed += 1
            else:
                keep.append(conn)
        self._idle = keep
        return closed

    def retire(self) -> None:
        """The upstream is gone: close idle connections now, busy ones when they finish."""
        self.retired = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    @property
    def idle_count(self) -> int:
        """Connections kept for reuse now."""
        return len(self._idle)

    def close(self) -> None:
        """Close every connection."""
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        for conn in self._all:
            conn.abort()
        self._all.clear()


class UpstreamConnections:
    """The router's side of its upstreams: one ``ConnectionPool`` per upstream URL."""

    def __init__(self, *, connect_timeout_s: float, keepalive_s: float = KEEPALIVE_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._pools: dict[str, ConnectionPool] = {}

    def pool(self, url: str) -> ConnectionPool:
        """The pool of ``url`` (made on first use)."""
        found = self._pools.get(url)
        if found is None:
            found = self._pools[url] = ConnectionPool(
                url, connect_timeout_s=self.connect_timeout_s, keepalive_s=self.keepalive_s
            )
        return found

    def discard(self, url: str) -> None:
        """Forget the pool of ``url`` (an upstream removed): see ``ConnectionPool.retire``."""
        found = self._pools.pop(url, None)
        if found is not None:
            found.retire()

    def sweep(self) -> int:
        """Close idle connections past their keep-alive time in every pool; how many."""
        return sum(pool.sweep() for pool in self._pools.values())

    def close(self) -> None:
        """Close every pool."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
