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

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, istr

from gpufleet import wire
from gpufleet.errors import (
    GpufleetError,
    NoHealthyBackend,
    PayloadTooLarge,
    RoutingError,
    UpstreamTimeout,
)
from gpufleet.router.admission import Admission
from gpufleet.router.pool import Registry
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import EJECTED, READY, Upstream

log = logging.getLogger("gpufleet.router")

#: Hop-by-hop headers (RFC 9110 §7.6.1) and those the client library sets itself.
_HOP_BY_HOP = tuple(
    istr(h)
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_REQUEST_DROP = (*_HOP_BY_HOP, istr("Host"), istr("Content-Length"), istr("Expect"))
_RESPONSE_DROP = (*_HOP_BY_HOP, istr("Content-Length"))
_CONNECTION = istr("Connection")
_XFF = istr("X-Forwarded-For")
_XFH = istr("X-Forwarded-Host")
_XFP = istr("X-Forwarded-Proto")
_RID = istr(wire.REQUEST_ID_HEADER)
_TIMEOUT = istr(wire.TIMEOUT_HEADER)
_UPSTREAM = istr(wire.UPSTREAM_HEADER)
_SERVER = istr(wire.SERVER_HEADER)
_ACCEL = istr("X-Accel-Buffering")
_CT = istr("Content-Type")
#: Answers up to this size with a Content-Length are read whole and sent in one write.
_SMALL_BODY = 256 * 1024
_RETRYABLE = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The router settings the hot path reads."""

    timeout_s: float
    retries: int
    max_body_bytes: int
    max_fails: int
    fail_timeout_s: float
    sticky_header: str


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
        session: aiohttp.ClientSession,
        settings: ProxySettings,
        totals: Totals,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.admissions = admissions
        self.session = session
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
        if not rid:
            self._rid_next += 1
            rid = f"{self._rid_prefix}-{self._rid_next:x}"
        try:
            return await self._handle(request, rid)
        except GpufleetError as exc:
            self.totals.count(exc.http_status)
            return error_response(exc, rid)
        finally:
            self.active -= 1
            if not self.active and self.idle is not None:
                self.idle.set()

    async def _handle(self, request: web.Request, rid: str) -> web.StreamResponse:
        settings = self.settings
        if request.body_exists:
            length = request.content_length
            if length is not None and length > settings.max_body_bytes:
                raise PayloadTooLarge(f"body of {length} bytes is over the limit")
            try:
                body: bytes | None = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge("body is over the limit") from None
        else:
            body = None
        pool, path = self.registry.resolve(request.path)
        admission = self.admissions[pool.name]
        headers = self._request_headers(request, rid)
        key = request.headers.get(self._sticky)
        now = self._clock()
        deadline = now + settings.timeout_s
        qs = request.query_string
        target = path + "?" + qs if qs else path
        tried: list[str] = []
        last: _NotRun | None = None
        for _attempt in range(settings.retries + 1):
            try:
                upstream = await admission.acquire(key, tried, deadline)
            except NoHealthyBackend:
                if last is not None and last.answer is not None:
                    return last.answer
                raise
            tried.append(upstream.id)
            headers[_TIMEOUT] = f"{max(deadline - self._clock(), 0.001):.3f}"
            try:
                return await self._attempt(request, upstream, target, headers, body, deadline, rid)
            except _NotRun as exc:
                last = exc
                self.totals.retries += 1
                log.debug("retrying %s %s: %s on %s", request.method, target, exc, upstream.url)
        if last is not None and last.answer is not None:
            return last.answer
        raise NoHealthyBackend(f"no upstream took the request after {len(tried)} attempt(s)")

    def _request_headers(self, request: web.Request, rid: str) -> CIMultiDict[str]:
        headers = CIMultiDict(request.headers)
        named = headers.get(_CONNECTION)
        for h in _REQUEST_DROP:
            headers.popall(h, None)
        if named:
            for token in named.split(","):
                headers.popall(token.strip(), None)
        peer = request.remote or ""
        prior = headers.get(_XFF)
        headers[_XFF] = f"{prior}, {peer}" if prior else peer
        if _XFH not in headers:
            headers[_XFH] = request.host
        if _XFP not in headers:
            headers[_XFP] = request.scheme
        headers[_RID] = rid
        return headers

    async def _attempt(
        self,
        request: web.Request,
        upstream: Upstream,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        deadline: float,
        rid: str,
    ) -> web.StreamResponse:
        """One try on ``upstream``; its slot is given back on every way out."""
        started = self._clock()
        latency: float | None = None
        stream: web.StreamResponse | None = None
        try:
            async with asyncio.timeout(deadline - started):
                resp = await self._send(request.method, upstream, target, headers, body)
                async with resp:
                    status = resp.status
                    out = _response_headers(resp, rid, upstream.id)
                    length = resp.content_length
                    small = length is not None and length <= _SMALL_BODY
                    if status >= 500:
                        data = await resp.read() if small else b""
                        if (
                            status == 503
                            and _SERVER in resp.headers
                            and (wire.is_overloaded_body(data))
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
                    async for chunk in resp.content.iter_any():
                        await stream.write(chunk)
                    await stream.write_eof()
                    if status < 500:
                        latency = self._clock() - started
                    self.totals.count(status)
                    return stream
        except TimeoutError:
            self._failed(upstream)
            if stream is not None:
                raise ConnectionResetError(f"{rid}: deadline passed mid-answer") from None
            raise UpstreamTimeout(f"no answer from {upstream.url} in time") from None
        except ConnectionResetError:
            raise  # the client went away while we wrote to it: not the upstream's fault
        except aiohttp.ClientError as exc:
            # Only a broken answer gets here: failures to send are _NotRun from _send.
            self._failed(upstream)
            log.warning("%s: answer from %s broke: %s", rid, upstream.url, exc)
            if stream is not None:
                raise ConnectionResetError(f"{rid}: upstream answer broke") from None
            raise RoutingError(f"answer from {upstream.url} broke: {exc}") from None
        finally:
            upstream.give_back(latency)
            admission = self.admissions.get(upstream.pool)
            if admission is not None and admission.depth:
                admission.dispatch()

    async def _send(
        self,
        method: str,
        upstream: Upstream,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | None,
    ) -> aiohttp.ClientResponse:
        """Send the request and read the answer's head."""
        try:
            return await self.session.request(
                method,
                upstream.base + target,
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO,
            )
        except _RETRYABLE as exc:
            # Refused, or reset before any answer byte: the request did not run.
            self._failed(upstream)
            raise _NotRun(f"{type(exc).__name__}: {exc}") from exc

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


def _response_headers(resp: aiohttp.ClientResponse, rid: str, upstream_id: str) -> CIMultiDict[str]:
    out = CIMultiDict(resp.headers)
    named = out.get(_CONNECTION)
    for h in _RESPONSE_DROP:
        out.popall(h, None)
    if named:
        for token in named.split(","):
            out.popall(token.strip(), None)
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
