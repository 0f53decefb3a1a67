"""A lean HTTP/1.1 client for the proxy's hot path: keep-alive pools and streamed answers.

aiohttp's client costs the router well over 100 µs of CPU per request (URL objects,
header multidicts, tracing, timers); this one writes a request head that the proxy built
as bytes, parses the answer with llhttp (``httptools``, the parser under uvicorn and
aiohttp) and hands the body on as it arrives. It speaks just what a proxy needs: one
request at a time per connection, ``Content-Length``, chunked and read-to-close bodies,
keep-alive, TLS.

Framing is strict: whatever could make two parties disagree on where an answer ends (two
``Content-Length`` headers, ``Transfer-Encoding`` with ``Content-Length`` or other than
``chunked``, a status outside 100..599, bytes nobody asked for) is ``AnswerBroken`` and
the connection is closed, never reused.

Errors say whether the request can have run upstream: ``NotSent`` (no connection, or it
had closed before the request was written) cannot have; ``Lost`` (written, then the
connection closed before any answer byte) may have; ``AnswerBroken`` (the answer began,
then broke or was not HTTP) did. Nothing here sends a request twice: the caller decides.
A caller that stops waiting (a cancelled task, ``Response.fail``) closes the connection,
so the upstream sees the client go.
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

import httptools
from yarl import URL

from gpufleet.errors import UpstreamError

#: Largest answer head accepted (its header lines, or the bytes before its blank line).
MAX_HEAD: Final = 64 * 1024
#: Most header lines accepted in an answer head.
MAX_HEADERS: Final = 100
#: Buffered answer bytes past which the upstream socket stops being read (back-pressure).
HIGH_WATER: Final = 256 * 1024
#: How long an idle upstream connection is kept: under the 5 s after which uvicorn (and
#: so a gpufleet worker) closes it, so that a request rarely goes out on a connection the
#: upstream is closing. An answer's ``Keep-Alive: timeout=N`` shortens it.
KEEPALIVE_S: Final = 4.0

_HEAD = 0  # waiting for the answer's head (interim 1xx answers are skipped)
_BODY = 1
_DONE = 2
_HTTP1: Final = b"HTTP/1."


class NotSent(UpstreamError):
    """The request was certainly not delivered: no connection, or it closed before the write."""


class Lost(UpstreamError):
    """The request was written, then the connection closed with no answer: it may have run."""

    def __init__(self, message: str, *, reused: bool) -> None:
        super().__init__(message)
        #: The connection was a kept-alive one (the upstream may have closed it as idle).
        self.reused = reused


class AnswerBroken(UpstreamError):
    """The answer broke off after it had begun, or was not valid HTTP/1.1."""


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp (what happened is on the ``Response``)."""


class Response:
    """The answer to one request: its head, then its body as it arrives."""

    __slots__ = (
        "_conn",
        "_exc",
        "_keep_s",
        "_names",
        "_no_body",
        "_queued",
        "_quiet",
        "_reused",
        "_state",
        "_to_eof",
        "_waiter",
        "chunks",
        "content_length",
        "has_head",
        "headers",
        "keep_alive",
        "received",
        "status",
    )

    def __init__(self, conn: _Connection, no_body: bool, reused: bool = False) -> None:
        self._conn = conn
        self._no_body = no_body
        self._reused = reused
        self._state = _HEAD
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._queued = 0
        # Bytes read since the last body bytes (a head, chunk framing, trailers): bounded.
        self._quiet = 0
        self._to_eof = False
        self._keep_s: float | None = None
        self.chunks: deque[bytes] = deque()
        self.status = 0
        #: Header (name, value) pairs as sent (values UTF-8 where they are, else Latin-1).
        self.headers: list[tuple[str, str]] = []
        self._names: list[bytes] = []  # the header names in lower case
        self.content_length: int | None = None
        self.keep_alive = True
        #: True once the answer's head has arrived.
        self.has_head = False
        #: Bytes received from the socket for this answer so far (a watchdog compares it).
        self.received = 0

    # read by the proxy ----------------------------------------------------------------

    async def wait_head(self) -> None:
        """Wait for the answer's head; on any failure or cancellation the connection closes.

        Raises:
            Lost: the connection closed before any answer byte.
            AnswerBroken: the head broke off or was not valid HTTP/1.1.
            BaseException: what ``fail`` was given.
        """
        try:
            while not self.has_head:
                if self._exc is not None:
                    raise self._exc
                await self._wait()
        except BaseException:
            self.close()
            raise

    def fail(self, exc: BaseException) -> None:
        """Make the waits on this answer raise ``exc`` and close the connection.

        For a timer or another task; does nothing once the answer is complete or failed.
        """
        if self._state == _DONE or self._exc is not None:
            return
        self._exc = exc
        self._wake()
        self._conn.abort()

    @property
    def is_done(self) -> bool:
        """True once the whole body has arrived."""
        return self._state == _DONE

    def header(self, lower_name: str) -> str | None:
        """The first value of a header (name given in lower case), if any."""
        names = self._names
        key = lower_name.encode()
        if key in names:
            return self.headers[names.index(key)][1]
        return None

    def header_values(self, lower_name: str) -> list[str]:
        """The values of every line of a header (name given in lower case), in order."""
        key = lower_name.encode()
        names = self._names
        if key not in names:  # the usual case, checked in C
            return []
        headers = self.headers
        return [headers[i][1] for i, name in enumerate(names) if name == key]

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

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _more(self) -> None:
        if self._exc is not None:
            raise self._exc
        self._conn.resume()  # the reader wants more: let the socket be read again
        await self._wait()
        if self._exc is not None and not self.chunks:
            raise self._exc

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _connection_lost(self, exc: BaseException | None) -> None:
        """The socket closed: the end of a read-to-close body, or a break."""
        if self._state != _DONE and self._exc is None:
            if self._to_eof and exc is None:
                self._state = _DONE  # a clean close ends a read-to-close body
            elif not self.received:
                why = f": {exc}" if exc else ""
                message = f"connection closed before any answer byte{why}"
                self._exc = Lost(message, reused=self._reused)
            else:
                self._exc = AnswerBroken(f"connection closed mid-answer: {exc}")
        self._wake()


def _text(value: bytes) -> str:
    """A header value as text: UTF-8 where it is (aiohttp writes it back as UTF-8, so it
    goes on unchanged), else Latin-1."""
    value = value.rstrip(b" \t")
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _keep_alive_s(value: bytes) -> float | None:
    """How long a connection may stay idle after ``Keep-Alive: timeout=N``: a second less
    than N (half of it when N is 1), so that we never race the upstream's own close."""
    for param in value.split(b","):
        key, _, number = param.partition(b"=")
        if key.strip().lower() == b"timeout":
            number = number.strip()
            if number.isdigit():
                n = int(number)
                return max(n - 1.0, n / 2)
    return None


class _Connection(asyncio.Protocol):
    """One TCP connection to an upstream, one request at a time; llhttp's callbacks too."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self.paused = False
        #: When an idle connection stops being reused (the pool's clock).
        self.expires = 0.0
        #: The (name, value) header fields of the head being parsed, from llhttp.
        self.fields: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None:
            self.abort()  # bytes while no request is out: the connection cannot be trusted
            return
        size = len(data)
        if not resp.received:
            # llhttp also takes RTSP/, ICE/, HTTP/2.0, HTTP/0.9 and leading blank lines.
            start = data[:7]
            if start != _HTTP1[: len(start)]:
                resp.fail(AnswerBroken(f"not an HTTP/1.x answer: {data[:40]!r}"))
                return
        resp.received += size
        queued = resp._queued
        resp._quiet += size  # until on_body shows otherwise (checked below)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_stopped(resp, data, exc)
            return
        if resp._state == _DONE:
            self.done(resp)
        elif resp._queued != queued:
            resp._quiet = 0
        elif resp._quiet > MAX_HEAD:
            what = "chunk framing or trailers" if resp.has_head else "answer head"
            resp.fail(AnswerBroken(f"{what} over {MAX_HEAD} bytes"))

    def _parse_stopped(self, resp: Response, data: bytes, exc: Exception) -> None:
        """llhttp stopped: an error (ours from a callback, or its own), or the end of a HEAD."""
        if resp._state != _DONE:
            if isinstance(exc, httptools.HttpParserUpgrade):
                resp.fail(AnswerBroken("an upgrade answer (101), never asked for"))
            else:  # a no-op when a callback already failed it with a clearer message
                resp.fail(AnswerBroken(f"not valid HTTP/1.1: {exc}"))
            return
        # The answer is complete; what stopped llhttp is what came after it.
        if resp._no_body and data.endswith(b"\r\n\r\n"):
            # A HEAD answer stops llhttp at its head (httptools cannot tell it "no body"):
            # a fresh parser for the next answer. Bytes after the head: not kept.
            self.parser = httptools.HttpResponseParser(self)
        else:
            resp.keep_alive = False  # bytes nobody asked for
        self.done(resp)

    # llhttp callbacks (during feed_data, so ``self.response`` is set) --------------------

    def on_message_begin(self) -> None:
        resp = self.response
        assert resp is not None
        if resp._state == _DONE:  # a second answer: nobody asked for it
            resp.keep_alive = False
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        parser = self.parser
        fields = self.fields
        self.fields = []  # the next head's (trailers land there, and are dropped)
        status = parser.get_status_code()  # llhttp took exactly three digits
        if status < 200:
            if status < 100 or status == 101:
                # 101 switches protocols, which we never ask for.
                resp.fail(AnswerBroken(f"answer status {status}"))
                raise _Stop
            resp._quiet = 0  # an interim answer (100 Continue, 103 Early Hints): skipped
            return
        if status > 599:
            resp.fail(AnswerBroken(f"answer status {status}"))
            raise _Stop
        if len(fields) > MAX_HEADERS:
            resp.fail(AnswerBroken(f"more than {MAX_HEADERS} header lines"))
            raise _Stop
        if resp._quiet > MAX_HEAD and sum(len(n) + len(v) + 4 for n, v in fields) > MAX_HEAD:
            resp.fail(AnswerBroken(f"answer head over {MAX_HEAD} bytes"))
            raise _Stop
        resp._quiet = 0
        # One pass each, in C where it can be: the hot path of every answer.
        names = resp._names = [name.lower() for name, _ in fields]
        try:
            # llhttp took only token characters in names; it keeps whitespace after values.
            resp.headers = [
                (name.decode(), value.rstrip(b" \t").decode()) for name, value in fields
            ]
        except UnicodeDecodeError:
            resp.headers = [(name.decode(), _text(value)) for name, value in fields]
        if b"content-length" in names:
            # llhttp took only ASCII digits, and refused a second Content-Length.
            resp.content_length = int(fields[names.index(b"content-length")][1])
        if b"keep-alive" in names:
            resp._keep_s = _keep_alive_s(fields[names.index(b"keep-alive")][1])
        resp.status = status
        resp.keep_alive = parser.should_keep_alive()
        resp.has_head = True
        if resp._no_body or status == 204 or status == 304:
            if resp.content_length is None:
                resp.content_length = 0
            resp._state = _DONE
            resp._wake()
            if resp._no_body:
                raise _Stop  # llhttp would wait for the body the head announces
            return
        if b"transfer-encoding" in names:
            # RFC 9112 reads to close after another final coding; a proxy would pass on a
            # body still encoded, or misjudge where it ends: refuse anything else.
            te = b",".join(
                [v for i, (_, v) in enumerate(fields) if names[i] == b"transfer-encoding"]
            )
            if te.strip().lower() != b"chunked":
                resp.fail(AnswerBroken(f"Transfer-Encoding {te.decode('latin-1')!r}"))
                raise _Stop
        elif resp.content_length is None:
            resp._to_eof = True  # llhttp reads it to the close, and keeps nothing alive
        resp._state = _BODY
        waiter = resp._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        resp = self.response
        assert resp is not None
        resp.chunks.append(body)
        queued = resp._queued = resp._queued + len(body)
        if queued > HIGH_WATER:
            self.pause()
        waiter = resp._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        resp = self.response
        assert resp is not None
        if resp.has_head:  # else an interim answer ended
            resp._state = _DONE
            waiter = resp._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self.fields:
                self.fields = []  # a chunked body's trailers: not passed on

    # the socket ---------------------------------------------------------------------------

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self.response
        self.response = None
        if response is not None:
            response._connection_lost(exc)

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
        if self.paused:
            self.resume()
        if response.keep_alive and not self.closed:
            self.pool.put(self, response._keep_s)
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


class Client:
    """One ``UpstreamPool`` per upstream URL."""

    def __init__(self, *, connect_timeout_s: float, keepalive_s: float = KEEPALIVE_S) -> None:
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
        """Close idle connections past their keep-alive time in every pool; how many."""
        return sum(pool.sweep() for pool in self._pools.values())

    def close(self) -> None:
        """Close every pool."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
