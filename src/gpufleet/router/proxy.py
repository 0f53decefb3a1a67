"""Forward one request to an upstream, every attempt bounded in time; retry honestly.

A request is read whole first (bounded by ``--max-body-mb``): a retry can replay it, and
a client that uploads slowly never holds an upstream's slot. The answer streams back
chunk by chunk.

Each failed attempt is one of (``RETRY_REASONS``): *not sent* (no connection), *refused*
(a gpufleet worker's 503 ``WorkerOverloaded``/``WorkerUnavailable``, or a 429: it did not
start), *lost* (sent, then the connection closed with no answer: it may have run) or
*timeout* (sent, no answer began within the first-byte timeout). The first two may go
elsewhere; the last two only where running twice is harmless (a gpufleet worker, an
idempotent method, or ``--retry-lost``) and once. A timed-out attempt goes elsewhere only
when it was queued behind an older one on that upstream: the oldest may be what stuck
it. Every retry draws from the retry budget. Nothing is retried once bytes reached the
client, nor after a 4xx or any other 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import istr
from yarl import URL

from gpufleet import wire
from gpufleet._server import refuse_and_close
from gpufleet.errors import (
    AdmissionRejected,
    BadRequest,
    GpufleetError,
    NoHealthyBackend,
    PayloadTooLarge,
    RequestTimeout,
    RoutingError,
    UpstreamTimeout,
)
from gpufleet.router.admission import INTERACTIVE, PRIORITIES, Admission
from gpufleet.router.headers import request_headers, response_headers
from gpufleet.router.http1 import AnswerBroken, Client, Lost, NotSent, Response
from gpufleet.router.models import ModelCatalog, model_of
from gpufleet.router.pool import DEFAULT_POOL, Registry
from gpufleet.router.prefix import PROMPT_PATHS, prompt_blocks, prompt_text
from gpufleet.router.retry_budget import RetryBudget
from gpufleet.router.stats import Totals
from gpufleet.router.tokens import usage_of
from gpufleet.router.upstream import EJECTED, READY, Abandoned, Upstream
from gpufleet.router.watch import (
    AttemptWatch,
    ClientStalled,
    DeadlinePassed,
    FirstByteMissed,
    Stop,
)

log = logging.getLogger("gpufleet.router")

_RID = istr(wire.REQUEST_ID_HEADER)
_TIMEOUT_LINE = f"{wire.TIMEOUT_HEADER}: ".encode()
_ATTEMPTS = istr(wire.ATTEMPTS_HEADER)
_FIRST_BYTE = istr(wire.FIRST_BYTE_TIMEOUT_HEADER)
_PRIORITY = istr(wire.PRIORITY_HEADER)
_SERVER = wire.SERVER_HEADER.lower()
_FAULT = wire.FAULT_HEADER.lower()
_ACCEL = istr("X-Accel-Buffering")
_CT = istr("Content-Type")
_CL = istr("Content-Length")
#: Methods that may be sent again after an attempt was lost (RFC 9110 §9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: Answers up to this size with a Content-Length are read whole and sent in one write.
_SMALL_BODY = 256 * 1024
#: Bytes of an LLM stream's end kept to find its ``usage``.
_TAIL = 4096
#: The longest client ``X-Request-Id`` kept (longer ones, or not printable ASCII: minted).
MAX_REQUEST_ID = 200


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The router settings the hot path reads."""

    timeout_s: float
    retries: int
    max_body_bytes: int
    max_fails: int
    fail_timeout_s: float
    sticky_header: str
    stream_idle_timeout_s: float = 60.0
    client_write_timeout_s: float = 30.0
    retry_lost: bool = False
    max_ejection_percent: float = 50.0
    #: The admin API's token: an ``Authorization`` header carrying it is not passed on.
    admin_token: str | None = None
    #: Pass ``Authorization`` and ``Cookie`` on to upstreams (else they stay here).
    forward_auth: bool = False


# Why an attempt failed before any byte reached the client (the ``retries`` reasons).
NOT_SENT: Final = "not_sent"  # no connection: the request cannot have run
REFUSED: Final = "refused"  # the upstream said it did not start it (queue full, 429)
LOST: Final = "lost"  # sent, then no answer (connection closed): it may have run
TIMEOUT: Final = "timeout"  # sent, no answer within the first-byte timeout: moved on
RETRY_REASONS: Final = (NOT_SENT, REFUSED, LOST, TIMEOUT)


class _Failed(Exception):
    """One attempt failed before any byte reached the client; maybe another may follow."""

    def __init__(
        self,
        reason: str,
        error: GpufleetError | None,
        answer: web.Response | None = None,
        *,
        may_retry: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        #: What the client gets if no attempt follows: our error, or the upstream's answer.
        self.error = error
        self.answer = answer
        self.may_retry = may_retry


class _Request:
    """What one request carries through its attempts."""

    __slots__ = ("attempts", "first_byte_s", "llm", "rid")

    def __init__(self, rid: str, first_byte_s: float) -> None:
        self.rid = rid
        self.attempts = 0
        #: An LLM route (chat, completions, generate): its tokens are counted.
        self.llm = False
        #: The caller's own first-byte timeout (``X-Gpufleet-First-Byte-Timeout``), or 0.
        self.first_byte_s = first_byte_s


class Proxy:
    """The catch-all handler: admission, one or more attempts, streaming the answer."""

    def __init__(
        self,
        registry: Registry,
        admissions: dict[str, Admission],
        client: Client,
        settings: ProxySettings,
        totals: Totals,
        *,
        budget: RetryBudget | None = None,
        models: ModelCatalog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.admissions = admissions
        self.client = client
        self.settings = settings
        self.totals = totals
        self.budget = budget or RetryBudget(20.0, 3, clock=clock)
        #: Which pool serves which model (routing /v1/* by the body's ``model``).
        self.models = models
        self._clock = clock
        self._rid_prefix = os.urandom(6).hex()
        self._rid_next = 0
        self._sticky = istr(settings.sticky_header)
        self._admin_token = (settings.admin_token or "").encode()
        #: Requests being proxied now, and an event set when that drops to 0 (drain).
        self.active = 0
        self.idle: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxy ``request`` to an upstream of the pool its path routes to."""
        self.totals.requests += 1
        self.budget.note_request()
        self.active += 1
        headers = request.headers
        rid = headers.get(_RID)
        if not rid or len(rid) > MAX_REQUEST_ID or not (rid.isascii() and rid.isprintable()):
            self._rid_next += 1
            rid = f"{self._rid_prefix}-{self._rid_next:x}"
        req = _Request(rid, _seconds(headers.get(_FIRST_BYTE)))
        try:
            return await self._handle(request, req)
        except GpufleetError as exc:
            self.totals.count(exc.http_status)
            answer = error_response(exc, rid)
            answer.headers[_ATTEMPTS] = str(req.attempts)
            if isinstance(exc, RequestTimeout):
                # The rest of the body may never come: answer, then close at once (aiohttp
                # would otherwise linger, reading the body, for up to 10 s).
                answer.force_close()
                await answer.prepare(request)
                await answer.write_eof()
                request.protocol.force_close()
            elif not request.content.is_eof():
                # Refused before its body ended (over the limit, broken framing): the rest
                # is not read (issue 13).
                return await refuse_and_close(request, answer)
            return answer
        finally:
            self.active -= 1
            if not self.active and self.idle is not None:
                self.idle.set()

    async def _handle(self, request: web.Request, req: _Request) -> web.StreamResponse:
        settings = self.settings
        # One deadline from the first byte we handle: the client's upload counts too, so a
        # stalled body cannot hold the request (or a drain) forever.
        deadline = self._clock() + settings.timeout_s
        if request.body_exists:
            length = request.content_length
            if length is not None and length > settings.max_body_bytes:
                raise PayloadTooLarge(f"body of {length} bytes is over the limit")
            try:
                if request.content.is_eof():
                    body: bytes | None = await request.read()  # all here: no timer needed
                else:
                    async with asyncio.timeout(settings.timeout_s):
                        body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge("body is over the limit") from None
            except HttpProcessingError as exc:
                raise BadRequest(f"malformed request body: {exc.message}") from None
            except TimeoutError:
                raise RequestTimeout(
                    f"request body not received within {settings.timeout_s:g}s"
                ) from None
        else:
            body = None
        path = request.path
        pool, upstream_path = self.registry.resolve(path)
        if (
            body
            and self.models is not None
            and len(self.registry.pools) > 1
            and pool.name == DEFAULT_POOL
            and upstream_path.startswith("/v1/")
        ):
            # Path routing left it to the default pool: the pool serving its model.
            model = model_of(body)
            if model:
                pool = self.registry.pools[self.models.pool_for(model, pool.name)]
        if upstream_path == path:
            target = request.raw_path  # as the client encoded it, query included
        else:
            qs = request.query_string
            target = URL.build(path=upstream_path, query_string=qs).raw_path_qs
        admission = self.admissions[pool.name]
        method = request.method
        headers = self._request_headers(request, req.rid, body)
        # The request line is ``method + upstream's path prefix + target``, made per attempt.
        request_line = (f"{method} ".encode(), target.encode("utf-8", "surrogateescape"))
        key = request.headers.get(self._sticky)
        priority = _priority(request.headers.get(_PRIORITY))
        prompt: list[int] | None = None
        req.llm = method == "POST" and upstream_path.endswith(PROMPT_PATHS)
        if body and admission.uses_prompt:
            text = prompt_text(upstream_path, body)
            if text:
                prompt = prompt_blocks(text)
        # Upstreams this request must not go back to (a refusal does not count: the
        # upstream takes it again once it has room, which is what Retry-After asks).
        exclude: list[str] = []
        failed: _Failed | None = None
        lost_retried = False
        budget = self.budget
        taken = 0
        try:
            while True:
                try:
                    upstream = await admission.acquire(key, exclude, deadline, prompt, priority)
                except (NoHealthyBackend, AdmissionRejected, UpstreamTimeout):
                    if failed is not None:
                        return self._give_up(failed, req)
                    raise
                req.attempts += 1
                try:
                    return await self._attempt(
                        request, upstream, request_line, headers, body, deadline, req
                    )
                except _Failed as exc:
                    failed = exc
                    if exc.reason != REFUSED:
                        exclude.append(upstream.id)
                    if not self._may_retry(exc, upstream, method, lost_retried, req):
                        return self._give_up(exc, req)
                    if not budget.try_take():
                        self.totals.budget_exhausted += 1
                        return self._give_up(exc, req)
                    taken += 1
                    if exc.reason in (LOST, TIMEOUT):
                        lost_retried = True
                    self.totals.retry(exc.reason)
                    log.debug(
                        "%s: retrying %s %s (%s on %s)", req.rid, method, target, exc, upstream.id
                    )
        finally:
            for _ in range(taken):
                budget.done()

    def _may_retry(
        self, exc: _Failed, upstream: Upstream, method: str, lost_retried: bool, req: _Request
    ) -> bool:
        """Whether the attempt that failed with ``exc`` may be followed by another."""
        if not exc.may_retry or req.attempts > self.settings.retries:
            return False
        if exc.reason in (LOST, TIMEOUT):
            # Sent and maybe run: again only where running twice is harmless, and once.
            return not lost_retried and (
                upstream.is_gpufleet or method in _IDEMPOTENT or self.settings.retry_lost
            )
        return True

    def _give_up(self, failed: _Failed, req: _Request) -> web.StreamResponse:
        """No attempt follows ``failed``: answer what it left."""
        if failed.answer is not None:
            self.totals.count(failed.answer.status)
            failed.answer.headers[_ATTEMPTS] = str(req.attempts)
            return failed.answer
        assert failed.error is not None
        raise failed.error

    def _is_admin(self, authorization: bytes) -> bool:
        """True when an ``Authorization`` value carries the admin token (constant time)."""
        _, _, given = authorization.strip().partition(b" ")
        return hmac.compare_digest(given.strip(), self._admin_token)

    def _request_headers(self, request: web.Request, rid: str, body: bytes | None) -> bytes:
        """The header lines passed upstream (all but Host and the deadline), as bytes."""
        return request_headers(
            request,
            rid,
            body,
            self._is_admin if self._admin_token else None,
            forward_auth=self.settings.forward_auth,
        )

    async def _attempt(
        self,
        request: web.Request,
        upstream: Upstream,
        request_line: tuple[bytes, bytes],
        headers: bytes,
        body: bytes | None,
        deadline: float,
        req: _Request,
    ) -> web.StreamResponse:
        """One try on ``upstream``; its slot is given back on every way out.

        Raises:
            _Failed: nothing reached the client; the caller decides whether to retry.
        """
        started = self._clock()
        latency: float | None = None
        stream: web.StreamResponse | None = None
        resp: Response | None = None
        watch: AttemptWatch | None = None
        no_body = request.method == "HEAD"
        rid = req.rid
        try:  # from here on, ``finally`` gives the slot back whatever happens
            pool = self.client.pool(upstream.base)
            head = b"".join(
                (
                    request_line[0],
                    pool.prefix,
                    request_line[1],
                    b" HTTP/1.1\r\n",
                    pool.host_line,
                    headers,
                    _TIMEOUT_LINE,
                    f"{max(deadline - started, 0.001):.3f}".encode(),
                    b"\r\n\r\n",
                )
            )
            try:
                resp = await pool.send(head, body, no_body=no_body)
            except NotSent as exc:
                self._failed(upstream)
                # Nothing ran: when no other upstream takes it, the fleet is down (503).
                raise _Failed(
                    NOT_SENT, NoHealthyBackend(f"could not reach {_name(upstream)}: {exc}")
                ) from None
            watch = AttemptWatch(
                resp,
                request,
                deadline,
                self.settings.stream_idle_timeout_s,
                self.settings.client_write_timeout_s,
                self._clock,
            )
            own_s = upstream.first_byte_timeout_s
            callers = 0 < req.first_byte_s < own_s  # the caller asked for less than usual
            upstream.waiting[resp] = started
            watch.head(upstream, req.first_byte_s or own_s, callers=callers)
            try:
                await resp.wait_head()
            except Lost as exc:
                self._failed(upstream)
                raise _Failed(
                    LOST, RoutingError(f"{_name(upstream)} closed the connection: {exc}")
                ) from None
            except FirstByteMissed as exc:
                if exc.callers:
                    raise _Failed(
                        TIMEOUT,
                        UpstreamTimeout(f"no answer from {_name(upstream)}: {exc}"),
                        may_retry=False,
                    ) from None
                self._failed(upstream)
                # Suspect now: no new work for the timeout, then a trial. Look again then.
                self._dispatch_later(upstream, exc.timeout_s)
                log.warning(
                    "%s: %s: %s%s",
                    rid,
                    _name(upstream),
                    exc,
                    " (queued behind an older request: moving it)" if exc.behind else "",
                )
                raise _Failed(
                    TIMEOUT,
                    UpstreamTimeout(f"no answer from {_name(upstream)}: {exc}"),
                    may_retry=exc.behind,
                ) from None
            except Abandoned as exc:
                # Its probes failed: the process stopped, not (likely) this request.
                raise _Failed(
                    LOST, UpstreamTimeout(f"no answer from {_name(upstream)}: {exc}")
                ) from None
            except DeadlinePassed:
                self._failed(upstream)
                raise UpstreamTimeout(
                    f"no answer from {_name(upstream)} before the deadline"
                ) from None
            except AnswerBroken as exc:
                self._failed(upstream)
                log.warning("%s: answer from %s broke: %s", rid, _name(upstream), exc)
                raise _Failed(
                    LOST,
                    RoutingError(f"{_name(upstream)} sent a broken answer: {exc}"),
                    may_retry=False,
                ) from None
            finally:
                upstream.waiting.pop(resp, None)
            upstream.note_first_byte(self._clock() - started)
            admission = self.admissions.get(upstream.pool)
            if admission is not None and admission.depth:
                admission.dispatch()  # no longer waiting: it may have room for new work
            if resp.is_done:
                watch.cancel()  # all of it is here (a stream below still bounds its writes)
            else:
                watch.body()
            status = resp.status
            out = response_headers(resp, rid, upstream.id)
            out[_ATTEMPTS] = str(req.attempts)
            length = resp.content_length
            if no_body and resp.header("content-length") is not None:
                out[_CL] = str(length)  # a HEAD answer's length is the GET's: keep it
            small = length is not None and length <= _SMALL_BODY
            if status >= 500 or status == 429:
                data = await resp.read() if small else b""
                refused = status == 429 or (
                    status == 503
                    and resp.header(_SERVER) is not None
                    and wire.is_overloaded_body(data)
                )
                if refused:
                    answer = web.Response(status=status, headers=out, body=data)
                    self._refused(upstream, answer)
                    raise _Failed(REFUSED, None, answer)
                fault = resp.header(_FAULT)
                if fault == wire.FAULT_REQUEST:
                    # The upstream blames the request (a poisoned item): not its failure.
                    self.totals.request_faults += 1
                else:
                    self._failed(upstream, input_shaped=fault != wire.FAULT_WORKER)
                if small:
                    self.totals.count(status)
                    return web.Response(status=status, headers=out, body=data)
            elif small and not out.get(_CT, "").startswith("text/event-stream"):
                data = await resp.read()
                latency = self._clock() - started
                self.totals.count(status)
                if req.llm and status == 200:
                    upstream.token_counts().add(usage_of(data))
                return web.Response(status=status, headers=out, body=data)
            # A stream (or a large body): pass it on chunk by chunk.
            if resp.is_done:
                watch.body()
            out[_ACCEL] = "no"
            stream = web.StreamResponse(status=status, headers=out)
            if length is not None:
                stream.content_length = length
            await stream.prepare(request)
            self.totals.count(status)
            llm = req.llm and status == 200
            events = 0
            tail = b""
            first_at: float | None = None
            try:
                async for chunk in resp.iter_chunks():
                    if llm:
                        if first_at is None:
                            first_at = self._clock()
                        events += chunk.count(b"data:")
                        tail = chunk if len(chunk) >= _TAIL else (tail + chunk)[-_TAIL:]
                    watch.writes += 1
                    watch.writing = True
                    await stream.write(chunk)
                    watch.writing = False
            except (Stop, AnswerBroken, Lost) as exc:
                await self._broken(request, stream, upstream, exc, rid)
                return stream
            except ConnectionError:
                # The client went away (or the watch dropped it for reading nothing,
                # counted below): nobody is left to tell.
                return stream
            await stream.write_eof()
            if status < 500:
                latency = self._clock() - started
            if llm:
                end = self._clock()
                upstream.token_counts().add_stream(
                    tail,
                    events,
                    None if first_at is None else first_at - started,
                    0.0 if first_at is None else end - first_at,
                )
            return stream
        except (Stop, AnswerBroken, Lost) as exc:
            # The head had arrived; the body broke before anything reached the client.
            if not isinstance(exc, DeadlinePassed):
                self._failed(upstream)
            raise RoutingError(f"answer from {_name(upstream)} broke: {exc}") from None
        finally:
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
            if resp is not None and not resp.is_done:
                resp.close()  # the client left, or time ran out: the upstream sees it go
            upstream.give_back(latency)
            admission = self.admissions.get(upstream.pool)
            if admission is not None and admission.depth:
                admission.dispatch()

    async def _broken(
        self,
        request: web.Request,
        stream: web.StreamResponse,
        upstream: Upstream,
        exc: Exception,
        rid: str,
    ) -> None:
        """End an answer that broke after bytes reached the client, so the client can tell.

        An event stream gets a last ``event: error``; any other body is cut short (the
        connection closed before its end), never ended as if complete.
        """
        self.totals.broken += 1
        if not isinstance(exc, DeadlinePassed | ClientStalled):
            self._failed(upstream)
        log.warning("%s: answer from %s cut: %s", rid, _name(upstream), exc)
        transport = request.transport
        if isinstance(exc, ClientStalled) or transport is None or transport.is_closing():
            return
        if stream.headers.get(_CT, "").startswith("text/event-stream"):
            event = json.dumps(
                {
                    "error": {
                        "message": f"the answer from upstream {upstream.id} broke: {exc}",
                        "type": "upstream_error",
                        "code": type(exc).__name__.strip("_"),
                    }
                }
            )
            with contextlib.suppress(ConnectionError):
                await stream.write(f"event: error\ndata: {event}\n\n".encode())
                await stream.write_eof()
                return
        transport.abort()

    def _refused(self, upstream: Upstream, answer: web.Response) -> None:
        """A "not started" refusal: the upstream gets no more work until it has room."""
        retry_after = wire.parse_retry_after(answer.headers.get("Retry-After")) or 1.0
        # A long Retry-After (a per-tenant rate limit, say) must not take a ready upstream
        # out of rotation for an hour: at most the passive ejection window.
        retry_after = min(retry_after, self.settings.fail_timeout_s)
        upstream.refused(retry_after)
        # Its slots may all be given back before the wait is over: look again then.
        self._dispatch_later(upstream, retry_after)

    def _dispatch_later(self, upstream: Upstream, delay_s: float) -> None:
        """Run the pool's dispatch once ``delay_s`` has passed (a hold on it ends then)."""
        admission = self.admissions.get(upstream.pool)
        if admission is not None:
            asyncio.get_running_loop().call_later(delay_s, admission.dispatch)

    def _failed(self, upstream: Upstream, *, input_shaped: bool = False) -> None:
        """Count a failure against ``upstream``; eject it passively past max_fails.

        ``input_shaped``: a 5xx answer the upstream did not call its own (it may have come
        from the request): that never ejects the last ready upstream of a pool.
        """
        now = self._clock()
        settings = self.settings
        if (
            upstream.record_failure(now, settings.max_fails, settings.fail_timeout_s)
            and upstream.state == READY
        ):
            if not self._may_eject(upstream, input_shaped):
                self.totals.ejections_held += 1
                log.debug("not ejecting %s: too few upstreams would be left", upstream.url)
                return
            upstream.ejected_until = now + settings.fail_timeout_s
            log.warning(
                "ejecting %s: %d failures in %gs",
                upstream.url,
                settings.max_fails,
                settings.fail_timeout_s,
            )
            self.registry.set_state(upstream, EJECTED)

    def _may_eject(self, upstream: Upstream, input_shaped: bool) -> bool:
        """Whether a passive ejection of ``upstream`` keeps enough of its pool (as Envoy's
        ``max_ejection_percent``: at most that share ejected at once, always at least one)."""
        pool = self.registry.pools.get(upstream.pool)
        if pool is None:
            return True
        if input_shaped and len(pool.ready) <= 1:
            return False
        out = sum(1 for u in pool.members if u.state == EJECTED)
        share = int(len(pool.members) * self.settings.max_ejection_percent / 100)
        return out < max(1, share)


def _name(upstream: Upstream) -> str:
    """How an upstream is named in an error: ``w1 (http://127.0.0.1:8101)``."""
    return f"upstream {upstream.id} ({upstream.url})"


def _seconds(value: str | None) -> float:
    """A positive number of seconds from a header, else 0."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return seconds if 0 < seconds < 1e9 else 0.0


def _priority(value: str | None) -> str:
    """The admission class a request asks for (``X-Gpufleet-Priority``); unset: interactive.

    Raises:
        BadRequest: a value that is neither ``interactive`` nor ``batch``.
    """
    if value is None:
        return INTERACTIVE
    name = value.strip().lower()
    if name not in PRIORITIES:
        raise BadRequest(f"{wire.PRIORITY_HEADER} must be one of {', '.join(PRIORITIES)}")
    return name


def error_response(exc: GpufleetError, rid: str | None = None) -> web.Response:
    """The JSON answer for one of our errors, with ``Retry-After`` where it applies."""
    payload = wire.payload_from_exception(exc)
    if rid:
        payload["request_id"] = rid
    headers = {}
    if rid:
        headers[wire.REQUEST_ID_HEADER] = rid
    if exc.retry_after_s is not None:
        headers["Retry-After"] = wire.retry_after_header(exc.retry_after_s)
    return web.json_response(payload, status=exc.http_status, headers=headers)
