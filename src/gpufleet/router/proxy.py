"""Forward one request to an upstream with a deadline; retry only what did not run.

A request is read whole first (bounded by ``--max-body-mb``): a retry can replay it, and
a client that uploads slowly never holds an upstream's slot. The answer streams back
chunk by chunk. A retry goes to an upstream not tried yet, and only when the request
cannot have run: the connection was refused or reset before any response byte, or a
gpufleet worker answered 503 ``WorkerOverloaded``/``WorkerUnavailable``. Nothing is
retried once bytes reached the client, nor after a 4xx or a 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, istr
from yarl import URL

from gpufleet import wire
from gpufleet.errors import (
    BadRequest,
    GpufleetError,
    NoHealthyBackend,
    PayloadTooLarge,
    RoutingError,
    UpstreamTimeout,
)
from gpufleet.router.admission import Admission
from gpufleet.router.http1 import AnswerBroken, Client, NotSent, Response
from gpufleet.router.pool import Registry
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import EJECTED, READY, Upstream

log = logging.getLogger("gpufleet.router")

#: Hop-by-hop headers (RFC 9110 §7.6.1), lower case, as bytes (request) and str (answer).
_HOP_BY_HOP = (
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
)
#: Request headers not passed on as they came: hop-by-hop, those the proxy sets itself.
_REQUEST_DROP = frozenset(
    h.encode()
    for h in (
        *_HOP_BY_HOP,
        "host",
        "content-length",
        "expect",
        "x-forwarded-for",
        "x-request-id",
        "x-request-timeout",
    )
)
_RESPONSE_DROP = frozenset((*_HOP_BY_HOP, "content-length", "x-request-id"))
_XFF = b"x-forwarded-for"
_XFH = b"x-forwarded-host"
_XFP = b"x-forwarded-proto"
_CONNECTION = istr("Connection")
_RID = istr(wire.REQUEST_ID_HEADER)
_RID_LINE = f"{wire.REQUEST_ID_HEADER}: ".encode()
_TIMEOUT_LINE = f"{wire.TIMEOUT_HEADER}: ".encode()
_UPSTREAM = wire.UPSTREAM_HEADER
_SERVER = wire.SERVER_HEADER.lower()
_ACCEL = istr("X-Accel-Buffering")
_CT = istr("Content-Type")
_CL = istr("Content-Length")
_CRLF = b"\r\n"
#: Methods whose empty body is still announced (``Content-Length: 0``).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Answers up to this size with a Content-Length are read whole and sent in one write.
_SMALL_BODY = 256 * 1024
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


class RequestTimeout(BadRequest):
    """The client's request body did not arrive within the deadline -> 408."""

    http_status = 408


class _NotRun(Exception):
    """The attempt did not run upstream; another upstream may take it."""

    def __init__(self, reason: str, answer: web.Response | None = None) -> None:
        super().__init__(reason)
        self.answer = answer


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.admissions = admissions
        self.client = client
        self.settings = settings
        self.totals = totals
        self._clock = clock
        self._rid_prefix = os.urandom(6).hex()
        self._rid_next = 0
        self._sticky = istr(settings.sticky_header)
        #: Requests being proxied now, and an event set when that drops to 0 (drain).
        self.active = 0
        self.idle: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxy ``request`` to an upstream of the pool its path routes to."""
        self.totals.requests += 1
        self.active += 1
        rid = request.headers.get(_RID)
        if not rid or len(rid) > MAX_REQUEST_ID or not (rid.isascii() and rid.isprintable()):
            self._rid_next += 1
            rid = f"{self._rid_prefix}-{self._rid_next:x}"
        try:
            return await self._handle(request, rid)
        except GpufleetError as exc:
            self.totals.count(exc.http_status)
            answer = error_response(exc, rid)
            if isinstance(exc, RequestTimeout):
                # The rest of the body may never come: answer, then close at once (aiohttp
                # would otherwise linger, reading the body, for up to 10 s).
                answer.force_close()
                await answer.prepare(request)
                await answer.write_eof()
                request.protocol.force_close()
            return answer
        finally:
            self.active -= 1
            if not self.active and self.idle is not None:
                self.idle.set()

    async def _handle(self, request: web.Request, rid: str) -> web.StreamResponse:
        settings = self.settings
        # One deadline from the first byte we handle: the client's upload counts too, so a
        # stalled body cannot hold the request (or a drain) forever.
        deadline = self._clock() + settings.timeout_s
        if request.body_exists:
            length = request.content_length
            if length is not None and length > settings.max_body_bytes:
                raise PayloadTooLarge(f"body of {length} bytes is over the limit")
            try:
                async with asyncio.timeout(settings.timeout_s):
                    body: bytes | None = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge("body is over the limit") from None
            except TimeoutError:
                raise RequestTimeout(
                    f"request body not received within {settings.timeout_s:g}s"
                ) from None
        else:
            body = None
        path = request.path
        pool, upstream_path = self.registry.resolve(path)
        if upstream_path == path:
            target = request.raw_path  # as the client encoded it, query included
        else:
            qs = request.query_string
            target = URL.build(path=upstream_path, query_string=qs).raw_path_qs
        admission = self.admissions[pool.name]
        method = request.method
        headers = self._request_headers(request, rid, body)
        # The request line is ``method + upstream's path prefix + target``, made per attempt.
        request_line = (f"{method} ".encode(), target.encode("utf-8", "surrogateescape"))
        key = request.headers.get(self._sticky)
        tried: list[str] = []
        last: _NotRun | None = None
        for _attempt in range(settings.retries + 1):
            try:
                upstream = await admission.acquire(key, tried, deadline)
            except NoHealthyBackend:
                if last is not None and last.answer is not None:
                    self.totals.count(last.answer.status)
                    return last.answer
                raise
            tried.append(upstream.id)
            try:
                return await self._attempt(
                    request, upstream, request_line, headers, body, deadline, rid
                )
            except _NotRun as exc:
                last = exc
                self.totals.retries += 1
                log.debug("retrying %s %s: %s on %s", method, target, exc, upstream.url)
        if last is not None and last.answer is not None:
            self.totals.count(last.answer.status)
            return last.answer
        raise NoHealthyBackend(f"no upstream took the request after {len(tried)} attempt(s)")

    def _request_headers(self, request: web.Request, rid: str, body: bytes | None) -> bytes:
        """The header lines passed upstream (all but Host and the deadline), as bytes."""
        named = request.headers.get(_CONNECTION)
        drop = _REQUEST_DROP
        if named:
            drop = drop | {t.strip().lower().encode("latin-1") for t in named.split(",")}
        lines: list[bytes] = []
        prior: bytes | None = None
        has_xfh = has_xfp = False
        for name, value in request.raw_headers:
            lower = name.lower()
            if lower in drop:
                if lower == _XFF:
                    prior = value if prior is None else prior + b", " + value
                continue
            if lower == _XFH:
                has_xfh = True
            elif lower == _XFP:
                has_xfp = True
            lines += (name, b": ", value, _CRLF)
        peer = (request.remote or "").encode("latin-1")
        lines += (b"X-Forwarded-For: ", prior + b", " + peer if prior else peer, _CRLF)
        if not has_xfh:
            lines += (b"X-Forwarded-Host: ", _header_bytes(request.host), _CRLF)
        if not has_xfp:
            lines += (b"X-Forwarded-Proto: ", request.scheme.encode("latin-1"), _CRLF)
        lines += (_RID_LINE, rid.encode("latin-1"), _CRLF)
        if body is not None:
            lines += (b"Content-Length: ", str(len(body)).encode(), _CRLF)
        elif request.method in _BODY_METHODS:
            lines.append(b"Content-Length: 0\r\n")
        return b"".join(lines)

    async def _attempt(
        self,
        request: web.Request,
        upstream: Upstream,
        request_line: tuple[bytes, bytes],
        headers: bytes,
        body: bytes | None,
        deadline: float,
        rid: str,
    ) -> web.StreamResponse:
        """One try on ``upstream``; its slot is given back on every way out."""
        started = self._clock()
        latency: float | None = None
        stream: web.StreamResponse | None = None
        resp: Response | None = None
        no_body = request.method == "HEAD"
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
            async with asyncio.timeout(deadline - started):
                try:
                    resp = await pool.request(head, body, no_body=no_body)
                except NotSent as exc:
                    # Refused, or closed before any answer byte: the request did not run.
                    self._failed(upstream)
                    raise _NotRun(str(exc)) from exc
                status = resp.status
                out = _response_headers(resp, rid, upstream.id)
                length = resp.content_length
                if no_body and resp.header("content-length") is not None:
                    out[_CL] = str(length)  # a HEAD answer's length is the GET's: keep it
                small = length is not None and length <= _SMALL_BODY
                if status >= 500:
                    data = await resp.read() if small else b""
                    if (
                        status == 503
                        and resp.header(_SERVER) is not None
                        and wire.is_overloaded_body(data)
                    ):
                        answer = web.Response(status=status, headers=out, body=data)
                        raise _NotRun("worker overloaded", answer)
                    self._failed(upstream)
                    if small:
                        self.totals.count(status)
                        return web.Response(status=status, headers=out, body=data)
                elif small and not out.get(_CT, "").startswith("text/event-stream"):
                    data = await resp.read()
                    latency = self._clock() - started
                    self.totals.count(status)
                    return web.Response(status=status, headers=out, body=data)
                # A stream (or a large body): pass it on chunk by chunk.
                out[_ACCEL] = "no"
                stream = web.StreamResponse(status=status, headers=out)
                if length is not None:
                    stream.content_length = length
                await stream.prepare(request)
                async for chunk in resp.iter_chunks():
                    await stream.write(chunk)
                await stream.write_eof()
                if status < 500:
                    latency = self._clock() - started
                self.totals.count(status)
                return stream
        except TimeoutError:
            if stream is not None:
                # The upstream answered; the client's deadline ended a long stream. Not
                # the upstream's failure: it must not count towards a passive ejection.
                raise ConnectionResetError(f"{rid}: deadline passed mid-answer") from None
            self._failed(upstream)
            raise UpstreamTimeout(f"no answer from {upstream.url} in time") from None
        except AnswerBroken as exc:
            self._failed(upstream)
            log.warning("%s: answer from %s broke: %s", rid, upstream.url, exc)
            if stream is not None:
                raise ConnectionResetError(f"{rid}: upstream answer broke") from None
            raise RoutingError(f"answer from {upstream.url} broke: {exc}") from None
        finally:
            if resp is not None and not resp.is_done:
                resp.close()  # the client left, or time ran out: the upstream sees it go
            upstream.give_back(latency)
            admission = self.admissions.get(upstream.pool)
            if admission is not None and admission.depth:
                admission.dispatch()

    def _failed(self, upstream: Upstream) -> None:
        """Count a failure against ``upstream``; eject it passively past max_fails."""
        now = self._clock()
        settings = self.settings
        if (
            upstream.record_failure(now, settings.max_fails, settings.fail_timeout_s)
            and upstream.state == READY
        ):
            upstream.ejected_until = now + settings.fail_timeout_s
            log.warning(
                "ejecting %s: %d failures in %gs",
                upstream.url,
                settings.max_fails,
                settings.fail_timeout_s,
            )
            self.registry.set_state(upstream, EJECTED)


def _header_bytes(value: str) -> bytes:
    """A header value the client sent, back as bytes (aiohttp decoded it as UTF-8)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("ascii", "replace")


def _response_headers(resp: Response, rid: str, upstream_id: str) -> CIMultiDict[str]:
    """The answer's headers for the client: hop-by-hop ones out, ours in."""
    drop = _RESPONSE_DROP
    named = resp.header("connection")
    if named:
        drop = drop | {t.strip().lower() for t in named.split(",")}
    out: CIMultiDict[str] = CIMultiDict(
        [(name, value) for name, value in resp.headers if name.lower() not in drop]
    )
    out[_RID] = rid
    out[_UPSTREAM] = upstream_id
    return out


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
