"""What bounds one attempt in time, from outside the code that awaits it.

``AttemptWatch`` is the one timer of an attempt: while the answer's head is awaited it
fires once, at the first-byte timeout or the deadline, and fails the ``http1.Response``
with ``FirstByteMissed`` (telling whether the attempt was only queued behind another on
its upstream) or ``DeadlinePassed``. Once the answer streams it ticks every quarter of the
shorter of the stream idle and client write timeouts and compares counters (bytes
received, writes started), so the hot path reads no clock per chunk: an upstream silent
that long is cut (``StreamIdle``); a client write pending that long aborts the client's
socket and ends the upstream request (``ClientStalled``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from gpufleet.router.http1 import Response
from gpufleet.router.upstream import Upstream


class Stop(Exception):
    """Set on a ``Response`` from outside to end the wait for it (see ``AttemptWatch``)."""


class DeadlinePassed(Stop):
    """The request's deadline passed."""


class FirstByteMissed(Stop):
    """No answer began within the first-byte timeout."""

    def __init__(self, timeout_s: float, *, behind: bool, callers: bool = False) -> None:
        super().__init__(f"no answer began within {timeout_s:.3g}s")
        self.timeout_s = timeout_s
        #: An older attempt was still waiting on the same upstream: this one queued
        #: behind it, and may go elsewhere; the oldest may be the cause, and does not.
        self.behind = behind
        #: The caller's own, shorter timeout (``X-Gpufleet-First-Byte-Timeout``) ran out:
        #: nothing is held against the upstream.
        self.callers = callers


class StreamIdle(Stop):
    """A streamed answer sent nothing for ``stream_idle_timeout_s``."""


class ClientStalled(Stop):
    """The client accepted no answer bytes for ``client_write_timeout_s``."""


class AttemptWatch:
    """The one timer of an attempt: its first byte, then the idle and write bounds.

    While the answer's head is awaited the timer fires once, at the first-byte timeout
    or the deadline. Once the answer streams it ticks every quarter of the shorter of
    ``stream_idle_timeout_s`` and ``client_write_timeout_s`` and compares counters, so
    the hot path pays no clock call per chunk.
    """

    __slots__ = (
        "_handle",
        "_idle_s",
        "_last_received",
        "_last_writes",
        "_quiet_s",
        "_stalled_s",
        "_tick_s",
        "_write_s",
        "clock",
        "deadline",
        "request",
        "resp",
        "stalled",
        "writes",
        "writing",
    )

    def __init__(
        self,
        resp: Response,
        request: web.Request | None,
        deadline: float,
        idle_s: float,
        write_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.resp = resp
        self.request = request
        self.deadline = deadline
        self.clock = clock
        self._idle_s = idle_s
        self._write_s = write_s
        self._tick_s = min(self._idle_s, self._write_s) / 4
        self._handle: asyncio.TimerHandle | None = None
        self._last_received = -1
        self._last_writes = -1
        self._quiet_s = 0.0
        self._stalled_s = 0.0
        #: Writes to the client started, and whether one is under way (set by the proxy).
        self.writes = 0
        self.writing = False
        #: True once the client was dropped for reading nothing.
        self.stalled = False

    def head(self, upstream: Upstream, timeout_s: float, *, callers: bool = False) -> None:
        """Bound the wait for the answer's head (``callers``: by the caller's own bound)."""
        delay = min(timeout_s, self.deadline - self.clock())
        self._handle = asyncio.get_running_loop().call_later(
            max(delay, 0.0), self._head_due, upstream, timeout_s, callers
        )

    def _head_due(self, upstream: Upstream, timeout_s: float, callers: bool) -> None:
        resp = self.resp
        if resp.has_head:
            return
        if self.clock() >= self.deadline - 0.001:
            resp.fail(DeadlinePassed("deadline passed before the answer began"))
            return
        if callers:
            resp.fail(FirstByteMissed(timeout_s, behind=False, callers=True))
            return
        behind = upstream.first_byte_missed(resp, timeout_s)
        resp.fail(FirstByteMissed(timeout_s, behind=behind))

    def body(self) -> None:
        """The head arrived: watch the body (and the client) until ``cancel``."""
        self.cancel()
        self._schedule()

    def _schedule(self) -> None:
        now = self.clock()
        delay = min(self._tick_s, self.deadline - now)
        self._handle = asyncio.get_running_loop().call_later(max(delay, 0.0), self._tick)

    def _tick(self) -> None:
        resp = self.resp
        now = self.clock()
        if now >= self.deadline - 0.001:
            self._stop(DeadlinePassed("deadline passed during the answer"))
            return
        if self.writing and self.writes == self._last_writes:
            # One write has waited for the client since the last tick (meanwhile the
            # upstream is not read, so its silence says nothing).
            self._stalled_s += self._tick_s
            if self._stalled_s >= self._write_s:
                self.stalled = True
                self._stop(ClientStalled(f"the client read nothing for {self._write_s:g}s"))
                return
        else:
            self._last_writes = self.writes
            self._stalled_s = 0.0
            if resp.received != self._last_received or resp.is_done:
                self._last_received = resp.received
                self._quiet_s = 0.0
            else:
                self._quiet_s += self._tick_s
                if self._quiet_s >= self._idle_s:
                    resp.fail(StreamIdle(f"the upstream sent nothing for {self._idle_s:g}s"))
        self._schedule()

    def _stop(self, exc: Stop) -> None:
        """End the answer: the upstream read and, when a write is stuck, the client."""
        self.resp.fail(exc)
        if self.writing and self.request is not None:
            # A write waiting for the client to drain: only closing its socket frees it.
            transport = self.request.transport
            if transport is not None:
                transport.abort()

    def cancel(self) -> None:
        """Stop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
