"""One TCP connection to an upstream, one request at a time, read through llhttp.

``_Connection`` is the asyncio protocol and llhttp's callback object at once: bytes go
to the parser, the parser's callbacks fill the current ``Response`` (its head checked by
``framing.frame_head``), and a body queued past ``HIGH_WATER`` pauses the socket until
the reader asks for more. A complete answer gives the connection back to its pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Final, cast

import httptools

from gpufleet.router.http1.errors import AnswerBroken
from gpufleet.router.http1.framing import HTTP1, MAX_HEAD, StopParsing, frame_head
from gpufleet.router.http1.response import DONE, Response

if TYPE_CHECKING:
    from gpufleet.router.http1.connection_pool import ConnectionPool

#: Buffered answer bytes past which the upstream socket stops being read (back-pressure).
HIGH_WATER: Final = 256 * 1024


class _Connection(asyncio.Protocol):
    """One TCP connection to an upstream, one request at a time; llhttp's callbacks too."""

    def __init__(self, pool: ConnectionPool) -> None:
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
            start = data[:7]
            if start != HTTP1[: len(start)]:
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
        if resp._state == DONE:
            self.done(resp)
        elif resp._queued != queued:
            resp._quiet = 0
        elif resp._quiet > MAX_HEAD:
            what = "chunk framing or trailers" if resp.has_head else "answer head"
            resp.fail(AnswerBroken(f"{what} over {MAX_HEAD} bytes"))

    def _parse_stopped(self, resp: Response, data: bytes, exc: Exception) -> None:
        """llhttp stopped: an error (ours from a callback, or its own), or the end of a HEAD."""
        if resp._state != DONE:
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
        if resp._state == DONE:  # a second answer: nobody asked for it
            resp.keep_alive = False
            raise StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self.response
        assert resp is not None
        parser = self.parser
        fields = self.fields
        self.fields = []  # the next head's (trailers land there, and are dropped)
        # llhttp took exactly three digits of status.
        frame_head(resp, parser.get_status_code(), parser.should_keep_alive(), fields)

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
            resp._state = DONE
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
