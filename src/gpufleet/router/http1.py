"""A lean HTTP/1.1 client for the proxy's hot path: keep-alive pools and streamed answers.

aiohttp's client costs the router well over 100 µs of CPU per request (URL objects,
header multidicts, tracing, timers); this one writes a request head that the proxy built
as bytes, parses the answer's head with ``bytes`` methods, and hands the body on as it
arrives. It speaks just what a proxy needs: one request at a time per connection,
``Content-Length``, chunked and read-to-close bodies, keep-alive, TLS.

Errors say whether the request can have run upstream: ``NotSent`` (the connection was
refused, or closed before any byte of the answer) may be retried elsewhere;
``AnswerBroken`` (the answer stopped half-way) may not. A caller that stops waiting (a
cancelled task) closes the connection, so the upstream sees the client go.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Final, cast

from yarl import URL

#: Largest answer head accepted.
MAX_HEAD: Final = 64 * 1024
#: Most header lines accepted in an answer head.
MAX_HEADERS: Final = 100
#: Buffered answer bytes past which the upstream socket stops being read (back-pressure).
HIGH_WATER: Final = 256 * 1024

_HEAD = 0
_LENGTH = 1
_CHUNKED = 2
_TO_EOF = 3
_DONE = 4
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"
# Chunked sub-states.
_C_SIZE = 0
_C_DATA = 1
_C_CRLF = 2
_C_TRAILER = 3


class UpstreamError(Exception):
    """The exchange with an upstream failed."""


class NotSent(UpstreamError):
    """The request cannot have run: no connection, or closed before any answer byte."""


class AnswerBroken(UpstreamError):
    """The answer broke off (or was not HTTP) after it had begun."""


class Response:
    """The answer to one request: its head, then its body as it arrives."""

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_chunk_state",
        "_conn",
        "_exc",
        "_head_fut",
        "_no_body",
        "_queued",
        "_remaining",
        "_state",
        "_waiter",
        "chunks",
        "content_length",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self, conn: _Connection, head_fut: asyncio.Future[None], no_body: bool) -> None:
        self._conn = conn
        self._head_fut = head_fut
        self._no_body = no_body
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._chunk_state = _C_SIZE
        self._chunk_left = 0
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._queued = 0
        self.chunks: deque[bytes] = deque()
        self.status = 0
        #: Header (name, value) pairs as sent, decoded as Latin-1.
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self.keep_alive = True

    # fed by the connection -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Take bytes from the socket."""
        if self._state == _HEAD:
            buf = self._buf
            buf += data
            start = 0
            while True:
                end = buf.find(b"\r\n\r\n", start)
                if end < 0:
                    if start:
                        del buf[:start]
                    if len(buf) > MAX_HEAD:
                        self._fail(AnswerBroken("answer head too large"))
                    return
                if end - start > MAX_HEAD:  # the blank line came along with too much head
                    self._fail(AnswerBroken("answer head too large"))
                    return
                head = bytes(buf[start:end])
                start = end + 4
                if not self._parse_head(head):
                    return
                if self._state != _HEAD:
                    break
                # An interim 1xx answer: the real head follows (a loop, not a recursion).
            rest = bytes(buf[start:])
            buf.clear()
            if self._state == _DONE:
                if rest:
                    self.keep_alive = False  # bytes nobody asked for
                self._finish()
            elif rest:
                self._feed_body(rest)
            return
        self._feed_body(data)

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        try:
            if not status_line[0].startswith(b"HTTP/1."):
                raise ValueError(lines[0])
            status = int(status_line[1])
        except (ValueError, IndexError):
            self._fail(AnswerBroken(f"not an HTTP/1.x answer: {lines[0][:80]!r}"))
            return False
        if 100 <= status < 200:
            # An interim answer (we never send Expect: 100-continue): skip it.
            return True
        if len(lines) > MAX_HEADERS + 1:
            self._fail(AnswerBroken(f"more than {MAX_HEADERS} header lines"))
            return False
        headers = self.headers
        length: int | None = None
        chunked = False
        keep_alive = status_line[0] != b"HTTP/1.0"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                self._fail(AnswerBroken("malformed header line"))
                return False
            name = name.strip()
            value = value.strip()
            lower = name.lower()
            if lower == b"content-length":
                # ASCII digits only: int() would take "-1", "+5", "1_0" and other digits.
                if not value.isdigit():
                    self._fail(AnswerBroken("bad Content-Length"))
                    return False
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif lower == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self.status = status
        if self._no_body or status in (204, 304):
            self._state = _DONE
            self.content_length = 0 if length is None else length
        elif chunked:
            self._state = _CHUNKED
        elif length is not None:
            self.content_length = length
            self._remaining = length
            self._state = _LENGTH if length else _DONE
        else:
            self._state = _TO_EOF
            keep_alive = False
        self.keep_alive = keep_alive
        if not self._head_fut.done():
            self._head_fut.set_result(None)
        return True

    def _feed_body(self, data: bytes) -> None:
        state = self._state
        if state == _LENGTH:
            n = len(data)
            if n > self._remaining:
                self.keep_alive = False  # more than announced: do not trust the connection
                data = data[: self._remaining]
                n = self._remaining
            self._remaining -= n
            if n:
                self._push(data)
            if not self._remaining:
                self._finish()
        elif state == _CHUNKED:
            self._feed_chunked(data)
        elif state == _TO_EOF:
            if data:
                self._push(data)
        elif state == _DONE and data:
            self.keep_alive = False  # bytes nobody asked for

    def _feed_chunked(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            cs = self._chunk_state
            if cs == _C_DATA:
                if not buf:
                    return
                take = min(self._chunk_left, len(buf))
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._chunk_left -= take
                if not self._chunk_left:
                    self._chunk_state = _C_CRLF
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(AnswerBroken("chunk header too large"))
                return
            line = bytes(buf[:end])
            del buf[: end + 2]
            if cs == _C_SIZE:
                digits = line.split(b";", 1)[0].strip()
                # Hex digits only: int(x, 16) would take "-5", "+5", "0x5" and "5_0".
                if not digits or digits.translate(None, _HEX_DIGITS):
                    self._fail(AnswerBroken("bad chunk size"))
                    return
                size = int(digits, 16)
                if size:
                    self._chunk_left = size
                    self._chunk_state = _C_DATA
                else:
                    self._chunk_state = _C_TRAILER
            elif cs == _C_CRLF:
                if line:
                    self._fail(AnswerBroken("chunk not followed by CRLF"))
                    return
                self._chunk_state = _C_SIZE
            elif not line:  # _C_TRAILER: an empty line ends the body
                if buf:
                    self.keep_alive = False
                self._finish()
                return

    def _push(self, data: bytes) -> None:
        self.chunks.append(data)
        self._queued += len(data)
        if self._queued > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        self._state = _DONE
        self._wake()
        self._conn.done(self)

    def _fail(self, exc: UpstreamError) -> None:
        if self._exc is None:
            self._exc = exc
        if not self._head_fut.done():
            self._head_fut.set_exception(exc)
        self._wake()
        self._conn.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket closed: the end of a read-to-close body, or a break."""
        if self._state == _TO_EOF and exc is None:
            self._finish()  # a clean close ends a read-to-close body
            return
        if self._state == _DONE:
            return
        if self._state == _HEAD and not self._buf:
            error: UpstreamError = NotSent(f"connection closed before any answer byte: {exc}")
        else:
            error = AnswerBroken(f"connection closed mid-answer: {exc}")
        if self._exc is None:
            self._exc = error
        if not self._head_fut.done():
            self._head_fut.set_exception(error)
        self._wake()

    # read by the proxy ----------------------------------------------------------------

    @property
    def is_done(self) -> bool:
        """True once the whole body has arrived."""
        return self._state == _DONE

    def header(self, lower_name: str) -> str | None:
        """The first value of a header (name given in lower case), if any."""
        for name, value in self.headers:
            if name.lower() == lower_name:
                return value
        return None

    async def _more(self) -> None:
        if self._exc is not None:
            raise self._exc
        self._conn.resume()  # the reader wants more: let the socket be read again
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._exc is not None and not self.chunks:
            raise self._exc

    async def read(self) -> bytes:
        """The whole body."""
        while self._state != _DONE:
            await self._more()
        data = b"".join(self.chunks)
        self.chunks.clear()
        self._queued = 0
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives."""
        chunks = self.chunks
        while True:
            if chunks:
                data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
                chunks.clear()
                self._queued = 0
                yield data
                continue
            if self._state == _DONE:
                return
            await self._more()

    def close(self) -> None:
        """Give up on the answer: close the connection unless the answer is complete."""
        if self._state != _DONE:
            self._conn.abort()


class _Connection(asyncio.Protocol):
    """One TCP connection to an upstream, one request at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            self.abort()  # bytes while idle: the connection cannot be trusted
            return
        response.feed(data)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self.response
        self.response = None
        if response is not None:
            response.connection_lost(exc)

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def done(self, response: Response) -> None:
        """The answer is complete: back to the pool, or closed."""
        if self.response is not response:
            return
        self.response = None
        self.resume()
        if response.keep_alive and not self.closed:
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one upstream (``scheme://host:port``)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        keepalive_s: float = 30.0,
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

    def put(self, conn: _Connection) -> None:
        """Keep ``conn`` for the next request."""
        if self.retired or len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self._clock()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        """``conn`` closed."""
        self._all.discard(conn)

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        oldest = self._clock() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if conn.closed or conn.idle_since < oldest:
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

    async def request(self, head: bytes, body: bytes | None, *, no_body: bool) -> Response:
        """Send one request (``head`` ends with the blank line) and wait for the answer's head.

        Raises:
            NotSent: the request cannot have run.
            AnswerBroken: the answer's head was not HTTP.
        """
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, no_body)
            except NotSent:
                # A kept-alive connection the upstream had just closed (its idle timeout,
                # a restart): it never read this request. Once more, on a new connection.
                pass
        return await self._exchange(await self._connect(), head, body, no_body)

    async def _exchange(
        self, conn: _Connection, head: bytes, body: bytes | None, no_body: bool
    ) -> Response:
        head_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        response = Response(conn, head_fut, no_body)
        conn.response = response
        transport = conn.transport
        assert transport is not None
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        try:
            await head_fut
        except BaseException:
            # Cancelled, timed out or failed: this connection is done for.
            conn.abort()
            raise
        return response

    def sweep(self) -> int:
        """Close the idle connections kept past ``keepalive_s``; how many were closed."""
        oldest = self._clock() - self.keepalive_s
        keep: list[_Connection] = []
        closed = 0
        for conn in self._idle:
            if conn.closed or conn.idle_since < oldest:
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


class Client:
    """One ``UpstreamPool`` per upstream URL."""

    def __init__(self, *, connect_timeout_s: float, keepalive_s: float = 30.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._pools: dict[str, UpstreamPool] = {}

    def pool(self, url: str) -> UpstreamPool:
        """The pool of ``url`` (made on first use)."""
        found = self._pools.get(url)
        if found is None:
            found = self._pools[url] = UpstreamPool(
                url, connect_timeout_s=self.connect_timeout_s, keepalive_s=self.keepalive_s
            )
        return found

    def discard(self, url: str) -> None:
        """Forget the pool of ``url`` (an upstream removed): see ``UpstreamPool.retire``."""
        found = self._pools.pop(url, None)
        if found is not None:
            found.retire()

    def sweep(self) -> int:
        """Close idle connections past the keep-alive time in every pool; how many."""
        return sum(pool.sweep() for pool in self._pools.values())

    def close(self) -> None:
        """Close every pool."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
