"""One attempt of a request on one upstream, in named steps, its slot given back on every
way out.

``Attempts.run`` sends the request (``_send``), waits for the answer's head under the
attempt's watch (``_wait_head``, which turns each way of failing into an
``AttemptFailed`` reason, see ``retries``), then answers: a refusal or a small answer is
read whole (``_answer_whole``), anything else streams on (``_stream``, see ``relay``).
Nothing is retried here: the caller decides on the ``AttemptFailed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web
from multidict import CIMultiDict, istr

from gpufleet import wire
from gpufleet.errors import NoHealthyBackend, RoutingError, UpstreamTimeout
from gpufleet.router.admission import Admission
from gpufleet.router.ejection import Ejector
from gpufleet.router.forwarded import Forwarded
from gpufleet.router.headers import response_headers
from gpufleet.router.http1 import AnswerBroken, Lost, NotSent, Response, UpstreamConnections
from gpufleet.router.relay import end_broken, relay
from gpufleet.router.retries import LOST, NOT_SENT, REFUSED, TIMEOUT, AttemptFailed
from gpufleet.router.stats import Totals
from gpufleet.router.tokens import usage_of
from gpufleet.router.upstream import Abandoned, Upstream
from gpufleet.router.watch import AttemptWatch, ClientStalled, DeadlinePassed, FirstByteMissed, Stop

if TYPE_CHECKING:
    from gpufleet.router.proxy import ProxySettings

log = logging.getLogger("gpufleet.router")

_TIMEOUT_LINE: Final = f"{wire.TIMEOUT_HEADER}: ".encode()
_ATTEMPTS: Final = istr(wire.ATTEMPTS_HEADER)
_SERVER: Final = wire.SERVER_HEADER.lower()
_FAULT: Final = wire.FAULT_HEADER.lower()
_ACCEL: Final = istr("X-Accel-Buffering")
_CT: Final = istr("Content-Type")
_CL: Final = istr("Content-Length")
#: Answers up to this size with a Content-Length are read whole and sent in one write.
_SMALL_BODY: Final = 256 * 1024


class _Try:
    """What one attempt holds until it ends (given back in ``Attempts._end``)."""

    __slots__ = ("latency", "resp", "started", "watch")

    def __init__(self, started: float) -> None:
        self.started = started
        #: Set when the attempt answered well: the upstream's latency sample.
        self.latency: float | None = None
        self.resp: Response | None = None
        self.watch: AttemptWatch | None = None


class Attempts:
    """Runs attempts: send, wait for the head, answer whole or stream; count the outcome."""

    def __init__(
        self,
        client: UpstreamConnections,
        settings: ProxySettings,
        totals: Totals,
        admissions: dict[str, Admission],
        ejector: Ejector,
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.settings = settings
        self.totals = totals
        self.admissions = admissions
        self.ejector = ejector
        self._clock = clock

    async def run(
        self,
        request: web.Request,
        upstream: Upstream,
        fwd: Forwarded,
        deadline: float,
    ) -> web.StreamResponse:
        """One try of ``fwd`` on ``upstream``; its slot is given back on every way out.

        Raises:
            AttemptFailed: nothing reached the client; the caller decides whether to retry.
        """
        attempt = _Try(self._clock())
        try:  # from here on, ``_end`` gives the slot back whatever happens
            resp, watch = await self._begin(attempt, request, upstream, fwd, deadline)
            return await self._answer(request, resp, watch, upstream, fwd, attempt)
        except (Stop, AnswerBroken, Lost) as exc:
            raise self._broke(exc, upstream) from None
        finally:
            self._end(attempt, upstream, fwd.rid)

    async def run_whole(self, upstream: Upstream, fwd: Forwarded, deadline: float) -> web.Response:
        """One try of a request made in this process (the Batch API's): its answer read
        whole, nothing written anywhere; the slot is given back on every way out.

        Raises:
            AttemptFailed: as ``run``.
        """
        attempt = _Try(self._clock())
        try:
            resp, _ = await self._begin(attempt, None, upstream, fwd, deadline)
            out = self._headers(resp, upstream, fwd)
            if resp.status >= 500 or resp.status == 429:
                answer = await self._answer_failure(resp, upstream, out, small=True)
                assert answer is not None  # read whole: an answer, or AttemptFailed
                return answer
            return await self._read_whole(resp, upstream, fwd, attempt, out)
        except (Stop, AnswerBroken, Lost) as exc:
            raise self._broke(exc, upstream) from None
        finally:
            self._end(attempt, upstream, fwd.rid)

    async def _begin(
        self,
        attempt: _Try,
        request: web.Request | None,
        upstream: Upstream,
        fwd: Forwarded,
        deadline: float,
    ) -> tuple[Response, AttemptWatch]:
        """Send the request and wait for its answer's head under a new watch (kept on
        ``attempt``, so that ``_end`` stops it)."""
        resp = attempt.resp = await self._send(upstream, fwd, deadline, attempt.started)
        watch = attempt.watch = AttemptWatch(
            resp,
            request,
            deadline,
            self.settings.stream_idle_timeout_s,
            self.settings.client_write_timeout_s,
            self._clock,
        )
        await self._wait_head(resp, watch, upstream, fwd, attempt.started)
        return resp, watch

    def _broke(self, exc: Stop | AnswerBroken | Lost, upstream: Upstream) -> RoutingError:
        """The head had arrived; the body broke before anything reached the client."""
        if not isinstance(exc, DeadlinePassed):
            self.ejector.failed(upstream)
        return RoutingError(f"answer from {_name(upstream)} broke: {exc}")

    async def _send(
        self, upstream: Upstream, fwd: Forwarded, deadline: float, started: float
    ) -> Response:
        """Write the request to ``upstream``, its time left in ``X-Request-Timeout``."""
        pool = self.client.pool(upstream.base)
        head = b"".join(
            (
                fwd.method_bytes,
                pool.prefix,
                fwd.target_bytes,
                b" HTTP/1.1\r\n",
                pool.host_line,
                fwd.headers,
                _TIMEOUT_LINE,
                f"{max(deadline - started, 0.001):.3f}".encode(),
                b"\r\n\r\n",
            )
        )
        try:
            return await pool.send(head, fwd.body, no_body=fwd.no_body)
        except NotSent as exc:
            self.ejector.failed(upstream)
            # Nothing ran: when no other upstream takes it, the fleet is down (503).
            raise AttemptFailed(
                NOT_SENT, NoHealthyBackend(f"could not reach {_name(upstream)}: {exc}")
            ) from None

    async def _wait_head(
        self,
        resp: Response,
        watch: AttemptWatch,
        upstream: Upstream,
        fwd: Forwarded,
        started: float,
    ) -> None:
        """Wait for the answer's head under the watch's first-byte timeout and deadline.

        Raises:
            AttemptFailed: lost, timed out, abandoned or broken (each with its reason).
            UpstreamTimeout: the request's deadline passed.
        """
        own_s = upstream.first_byte_timeout_s
        callers = 0 < fwd.first_byte_s < own_s  # the caller asked for less than usual
        upstream.waiting[resp] = started
        watch.head(upstream, fwd.first_byte_s or own_s, callers=callers)
        try:
            await resp.wait_head()
        except Lost as exc:
            self.ejector.failed(upstream)
            raise AttemptFailed(
                LOST, RoutingError(f"{_name(upstream)} closed the connection: {exc}")
            ) from None
        except FirstByteMissed as exc:
            raise self._first_byte_missed(exc, upstream, fwd.rid) from None
        except Abandoned as exc:
            # Its probes failed: the process stopped, not (likely) this request.
            raise AttemptFailed(
                LOST, UpstreamTimeout(f"no answer from {_name(upstream)}: {exc}")
            ) from None
        except DeadlinePassed:
            self.ejector.failed(upstream)
            raise UpstreamTimeout(f"no answer from {_name(upstream)} before the deadline") from None
        except AnswerBroken as exc:
            self.ejector.failed(upstream)
            log.warning("%s: answer from %s broke: %s", fwd.rid, _name(upstream), exc)
            raise AttemptFailed(
                LOST,
                RoutingError(f"{_name(upstream)} sent a broken answer: {exc}"),
                may_retry=False,
            ) from None
        finally:
            upstream.waiting.pop(resp, None)
        upstream.note_first_byte(self._clock() - started)
        self._dispatch(upstream)  # no longer waiting: it may have room for new work
        if resp.is_done:
            watch.cancel()  # all of it is here (a stream below still bounds its writes)
        else:
            watch.body()

    def _first_byte_missed(
        self, exc: FirstByteMissed, upstream: Upstream, rid: str
    ) -> AttemptFailed:
        """The failure of an attempt whose answer did not begin in time."""
        error = UpstreamTimeout(f"no answer from {_name(upstream)}: {exc}")
        if exc.callers:  # the caller's own shorter timeout: nothing held against it
            return AttemptFailed(TIMEOUT, error, may_retry=False)
        self.ejector.failed(upstream)
        # Suspect now: no new work for the timeout, then a trial. Look again then.
        self.ejector.dispatch_later(upstream, exc.timeout_s)
        log.warning(
            "%s: %s: %s%s",
            rid,
            _name(upstream),
            exc,
            " (queued behind an older request: moving it)" if exc.behind else "",
        )
        return AttemptFailed(TIMEOUT, error, may_retry=exc.behind)

    async def _answer(
        self,
        request: web.Request,
        resp: Response,
        watch: AttemptWatch,
        upstream: Upstream,
        fwd: Forwarded,
        attempt: _Try,
    ) -> web.StreamResponse:
        """Answer the client from ``resp``: whole when it is small, else as a stream."""
        out = self._headers(resp, upstream, fwd)
        length = resp.content_length
        if fwd.no_body and resp.header("content-length") is not None:
            out[_CL] = str(length)  # a HEAD answer's length is the GET's: keep it
        small = length is not None and length <= _SMALL_BODY
        status = resp.status
        if status >= 500 or status == 429:
            answer = await self._answer_failure(resp, upstream, out, small)
            if answer is not None:
                return answer
        elif small and not out.get(_CT, "").startswith("text/event-stream"):
            return await self._read_whole(resp, upstream, fwd, attempt, out)
        # A stream (or a large body): pass it on chunk by chunk.
        if resp.is_done:
            watch.body()
        return await self._stream(request, resp, watch, upstream, fwd, attempt, out)

    @staticmethod
    def _headers(resp: Response, upstream: Upstream, fwd: Forwarded) -> CIMultiDict[str]:
        """The answer's headers for the client, with the attempt count."""
        out = response_headers(resp, fwd.rid, upstream.id)
        out[_ATTEMPTS] = str(fwd.attempts)
        return out

    async def _read_whole(
        self,
        resp: Response,
        upstream: Upstream,
        fwd: Forwarded,
        attempt: _Try,
        out: CIMultiDict[str],
    ) -> web.Response:
        """A good answer read whole: counted, its latency and its tokens noted."""
        data = await resp.read()
        attempt.latency = self._clock() - attempt.started
        self.totals.count(resp.status)
        if fwd.llm and resp.status == 200:
            upstream.token_counts().add(usage_of(data))
        return web.Response(status=resp.status, headers=out, body=data)

    async def _answer_failure(
        self, resp: Response, upstream: Upstream, out: CIMultiDict[str], small: bool
    ) -> web.Response | None:
        """A 5xx or 429 answer: a refusal raises, a small one is the answer, else ``None``.

        Raises:
            AttemptFailed: the upstream refused (``REFUSED``: it did not start the request).
        """
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
        self,
        request: web.Request,
        resp: Response,
        watch: AttemptWatch,
        upstream: Upstream,
        fwd: Forwarded,
        attempt: _Try,
        out: CIMultiDict[str],
    ) -> web.StreamResponse:
        """Stream the answer on; one that breaks now is cut so that the client can tell."""
        status = resp.status
        out[_ACCEL] = "no"
        stream = web.StreamResponse(status=status, headers=out)
        if resp.content_length is not None:
            stream.content_length = resp.content_length
        await stream.prepare(request)
        self.totals.count(status)
        tokens = upstream.token_counts if fwd.llm and status == 200 else None
        try:
            await relay(resp, stream, watch, tokens, attempt.started, self._clock)
        except (Stop, AnswerBroken, Lost) as exc:
            self.totals.broken += 1
            if not isinstance(exc, DeadlinePassed | ClientStalled):
                self.ejector.failed(upstream)
            log.warning("%s: answer from %s cut: %s", fwd.rid, _name(upstream), exc)
            await end_broken(request, stream, upstream.id, exc)
            return stream
        except ConnectionError:
            # The client went away (or the watch dropped it for reading nothing, counted
            # in ``_end``): nobody is left to tell.
            return stream
        if status < 500:
            attempt.latency = self._clock() - attempt.started
        return stream

    def _end(self, attempt: _Try, upstream: Upstream, rid: str) -> None:
        """The attempt is over: stop its watch, close an unfinished answer, give the slot."""
        watch = attempt.watch
        if watch is not None:
            watch.cancel()
            if watch.stalled:
                self.totals.client_stalled += 1
                log.warning(
                    "%s: the client read nothing for %gs: dropped, its request to %s ended",
                    rid,
                    self.settings.client_write_timeout_s,
                    upstream.id,
                )
        resp = attempt.resp
        if resp is not None and not resp.is_done:
            resp.close()  # the client left, or time ran out: the upstream sees it go
        upstream.give_back(attempt.latency)
        self._dispatch(upstream)

    def _dispatch(self, upstream: Upstream) -> None:
        """Let ``upstream``'s pool hand queued work on (it may have room now)."""
        admission = self.admissions.get(upstream.pool)
        if admission is not None and admission.depth:
            admission.dispatch()


def _name(upstream: Upstream) -> str:
    """How an upstream is named in an error: ``w1 (http://127.0.0.1:8101)``."""
    return f"upstream {upstream.id} ({upstream.url})"
