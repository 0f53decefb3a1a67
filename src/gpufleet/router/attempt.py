"""One attempt of a request on one upstream, in named steps, its slot given back on every
way out.

``Attempts.run`` sends the request (``_send``), waits for the answer's head under the
attempt's watch (``_wait_head``, which turns each way of failing into an
``AttemptFailed`` reason, see ``retries``), then passes the answer on (``answer``: a
refusal or a small answer read whole, anything else streamed, see ``relay``). Nothing
is retried here: the caller decides on the ``AttemptFailed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web

from gpufleet import wire
from gpufleet.errors import NoHealthyBackend, RoutingError, UpstreamTimeout
from gpufleet.router.admission import Admission
from gpufleet.router.answer import Answers, Head, Held
from gpufleet.router.answer import upstream_name as _name
from gpufleet.router.ejection import Ejector
from gpufleet.router.forwarded import Forwarded
from gpufleet.router.http1 import AnswerBroken, Lost, NotSent, Response, UpstreamConnections
from gpufleet.router.retries import LOST, NOT_SENT, TIMEOUT, AttemptFailed
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import Abandoned, Upstream
from gpufleet.router.watch import AttemptWatch, DeadlinePassed, FirstByteMissed, Stop

if TYPE_CHECKING:
    from gpufleet.router.proxy import ProxySettings

log = logging.getLogger("gpufleet.router")

_TIMEOUT_LINE: Final = f"{wire.TIMEOUT_HEADER}: ".encode()


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
        self.answers = Answers(totals, ejector, clock)
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
        held = Held(self._clock())
        try:  # from here on, ``_end`` gives the slot back whatever happens
            head = await self._begin(held, request, upstream, fwd, deadline)
            return await self.answers.answer(request, head)
        except (Stop, AnswerBroken, Lost) as exc:
            raise self._broke(exc, upstream) from None
        finally:
            self._end(held, upstream, fwd.rid)

    async def run_whole(self, upstream: Upstream, fwd: Forwarded, deadline: float) -> web.Response:
        """One try of a request made in this process (the Batch API's): its answer read
        whole, nothing written anywhere; the slot is given back on every way out.

        Raises:
            AttemptFailed: as ``run``.
        """
        held = Held(self._clock())
        try:
            return await self.answers.whole(await self._begin(held, None, upstream, fwd, deadline))
        except (Stop, AnswerBroken, Lost) as exc:
            raise self._broke(exc, upstream) from None
        finally:
            self._end(held, upstream, fwd.rid)

    async def _begin(
        self,
        held: Held,
        request: web.Request | None,
        upstream: Upstream,
        fwd: Forwarded,
        deadline: float,
    ) -> Head:
        """Send the request and wait for its answer's head under a new watch (kept in
        ``held``, so that ``_end`` stops it)."""
        resp = held.resp = await self._send(upstream, fwd, deadline, held.started)
        watch = held.watch = AttemptWatch(
            resp,
            request,
            deadline,
            self.settings.stream_idle_timeout_s,
            self.settings.client_write_timeout_s,
            self._clock,
        )
        await self._wait_head(resp, watch, upstream, fwd, held.started)
        return Head(resp, watch, upstream, fwd, held)

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

    def _end(self, held: Held, upstream: Upstream, rid: str) -> None:
        """The attempt is over: stop its watch, close an unfinished answer, give the slot."""
        watch = held.watch
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
        resp = held.resp
        if resp is not None and not resp.is_done:
            resp.close()  # the client left, or time ran out: the upstream sees it go
        upstream.give_back(held.latency)
        self._dispatch(upstream)

    def _dispatch(self, upstream: Upstream) -> None:
        """Let ``upstream``'s pool hand queued work on (it may have room now)."""
        admission = self.admissions.get(upstream.pool)
        if admission is not None and admission.depth:
            admission.dispatch()
