"""An attempt's answer passed on to the client, once its head has arrived.

A refusal (429, or a gpufleet worker's 503 "overloaded") raises ``AttemptFailed``
(``REFUSED``) so that another upstream may take the request; another 5xx is held against
the upstream (unless it blames the request) and passed on; a small answer is read whole
and sent in one write; anything else streams on chunk by chunk (``relay``), and a stream
that breaks is cut so that the client can tell. A request made in this process has its
answer read whole (``Answers.whole``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, istr

from gpufleet import wire
from gpufleet.router.ejection import Ejector
from gpufleet.router.forwarded import Forwarded
from gpufleet.router.headers import response_headers
from gpufleet.router.http1 import AnswerBroken, Lost, Response
from gpufleet.router.relay import end_broken, relay
from gpufleet.router.retries import REFUSED, AttemptFailed
from gpufleet.router.stats import Totals
from gpufleet.router.tokens import usage_of
from gpufleet.router.upstream import Upstream
from gpufleet.router.watch import AttemptWatch, ClientStalled, DeadlinePassed, Stop

log = logging.getLogger("gpufleet.router")

_ATTEMPTS: Final = istr(wire.ATTEMPTS_HEADER)
_SERVER: Final = wire.SERVER_HEADER.lower()
_FAULT: Final = wire.FAULT_HEADER.lower()
_ACCEL: Final = istr("X-Accel-Buffering")
_CT: Final = istr("Content-Type")
_CL: Final = istr("Content-Length")
#: Answers up to this size with a Content-Length are read whole and sent in one write.
SMALL_BODY: Final = 256 * 1024


class Held:
    """What one attempt holds until it ends (given back in ``Attempts._end``)."""

    __slots__ = ("latency", "resp", "started", "watch")

    def __init__(self, started: float) -> None:
        self.started = started
        #: Set when the attempt answered well: the upstream's latency sample.
        self.latency: float | None = None
        self.resp: Response | None = None
        self.watch: AttemptWatch | None = None


@dataclass(slots=True)
class Head:
    """An attempt whose answer's head has arrived: what passing the answer on needs."""

    resp: Response
    watch: AttemptWatch
    upstream: Upstream
    fwd: Forwarded
    held: Held


class Answers:
    """Passes answers on: whole when small, refused, held against the upstream, or streamed."""

    def __init__(self, totals: Totals, ejector: Ejector, clock: Callable[[], float]) -> None:
        self.totals = totals
        self.ejector = ejector
        self._clock = clock

    async def answer(self, request: web.Request, head: Head) -> web.StreamResponse:
        """Answer the client from ``head``: whole when it is small, else as a stream.

        Raises:
            AttemptFailed: the upstream refused.
        """
        resp = head.resp
        out = _headers(head)
        length = resp.content_length
        if head.fwd.no_body and resp.header("content-length") is not None:
            out[_CL] = str(length)  # a HEAD answer's length is the GET's: keep it
        small = length is not None and length <= SMALL_BODY
        status = resp.status
        if status >= 500 or status == 429:
            answer = await self._failure(head, out, small)
            if answer is not None:
                return answer
        elif small and not out.get(_CT, "").startswith("text/event-stream"):
            return await self._read_whole(head, out)
        # A stream (or a large body): pass it on chunk by chunk.
        if resp.is_done:
            head.watch.body()
        return await self._stream(request, head, out)

    async def whole(self, head: Head) -> web.Response:
        """The answer read whole, written nowhere (a request made in this process).

        Raises:
            AttemptFailed: the upstream refused.
        """
        out = _headers(head)
        if head.resp.status >= 500 or head.resp.status == 429:
            answer = await self._failure(head, out, small=True)
            assert answer is not None  # read whole: an answer, or AttemptFailed
            return answer
        return await self._read_whole(head, out)

    async def _read_whole(self, head: Head, out: CIMultiDict[str]) -> web.Response:
        """A good answer read whole: counted, its latency and its tokens noted."""
        resp = head.resp
        data = await resp.read()
        head.held.latency = self._clock() - head.held.started
        self.totals.count(resp.status)
        if head.fwd.llm and resp.status == 200:
            head.upstream.token_counts().add(usage_of(data))
        return web.Response(status=resp.status, headers=out, body=data)

    async def _failure(self, head: Head, out: CIMultiDict[str], small: bool) -> web.Response | None:
        """A 5xx or 429 answer: a refusal raises, a small one is the answer, else ``None``.

        Raises:
            AttemptFailed: the upstream refused (``REFUSED``: it did not start the request).
        """
        resp, upstream = head.resp, head.upstream
        status = resp.status
        data = await resp.read() if small else b""
        refused = status == 429 or (
            status == 503 and resp.header(_SERVER) is not None and wire.is_overloaded_body(data)
        )
        if refused:
            answer = web.Response(status=status, headers=out, body=data)
            self.ejector.refused(upstream, answer.headers.get("Retry-After"))
            raise AttemptFailed(REFUSED, None, answer)
        fault = resp.header(_FAULT)
        if fault == wire.FAULT_REQUEST:
            # The upstream blames the request (a poisoned item): not its failure.
            self.totals.request_faults += 1
        else:
            self.ejector.failed(upstream, input_shaped=fault != wire.FAULT_WORKER)
        if small:
            self.totals.count(status)
            return web.Response(status=status, headers=out, body=data)
        return None

    async def _stream(
        self, request: web.Request, head: Head, out: CIMultiDict[str]
    ) -> web.StreamResponse:
        """Stream the answer on; one that breaks now is cut so that the client can tell."""
        resp, upstream, fwd, held = head.resp, head.upstream, head.fwd, head.held
        status = resp.status
        out[_ACCEL] = "no"
        stream = web.StreamResponse(status=status, headers=out)
        if resp.content_length is not None:
            stream.content_length = resp.content_length
        await stream.prepare(request)
        self.totals.count(status)
        tokens = upstream.token_counts if fwd.llm and status == 200 else None
        try:
            await relay(resp, stream, head.watch, tokens, held.started, self._clock)
        except (Stop, AnswerBroken, Lost) as exc:
            self.totals.broken += 1
            if not isinstance(exc, DeadlinePassed | ClientStalled):
                self.ejector.failed(upstream)
            log.warning("%s: answer from %s cut: %s", fwd.rid, upstream_name(upstream), exc)
            await end_broken(request, stream, upstream.id, exc)
            return stream
        except ConnectionError:
            # The client went away (or the watch dropped it for reading nothing, counted
            # in ``_end``): nobody is left to tell.
            return stream
        if status < 500:
            held.latency = self._clock() - held.started
        return stream


def _headers(head: Head) -> CIMultiDict[str]:
    """The answer's headers for the client, with the attempt count."""
    out = response_headers(head.resp, head.fwd.rid, head.upstream.id)
    out[_ATTEMPTS] = str(head.fwd.attempts)
    return out


def upstream_name(upstream: Upstream) -> str:
    """How an upstream is named in an error: ``w1 (http://127.0.0.1:8101)``."""
    return f"upstream {upstream.id} ({upstream.url})"


__all__ = ["SMALL_BODY", "Answers", "Head", "Held", "upstream_name"]
