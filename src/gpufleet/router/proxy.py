"""Forward one request to an upstream, every attempt bounded in time; retry honestly.

A request is read whole first (bounded by ``--max-body-mb``): a retry can replay it, and
a client that uploads slowly never holds an upstream's slot. The answer streams back
chunk by chunk.

``Proxy`` reads and routes the request and runs the retry loop; one attempt is
``attempt.Attempts.run``; why an attempt failed and whether another may follow is
``retries``; what a failure holds against the upstream is ``ejection``; passing an answer
on is ``relay``. Every retry draws from the retry budget.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, istr
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
from gpufleet.router.attempt import Attempts
from gpufleet.router.ejection import Ejector
from gpufleet.router.forwarded import Forwarded, read_body
from gpufleet.router.headers import request_headers
from gpufleet.router.http1 import UpstreamConnections
from gpufleet.router.models import ModelCatalog, model_of
from gpufleet.router.pool import DEFAULT_POOL, Pool, Registry
from gpufleet.router.prefix import PROMPT_PATHS, prompt_blocks, prompt_text
from gpufleet.router.retries import REFUSED, AttemptFailed, may_retry
from gpufleet.router.retry_budget import RetryBudget
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import Upstream

log = logging.getLogger("gpufleet.router")

_RID: Final = istr(wire.REQUEST_ID_HEADER)
_ATTEMPTS: Final = istr(wire.ATTEMPTS_HEADER)
_FIRST_BYTE: Final = istr(wire.FIRST_BYTE_TIMEOUT_HEADER)
_PRIORITY: Final = istr(wire.PRIORITY_HEADER)
#: The longest client ``X-Request-Id`` kept (longer ones, or not printable ASCII: minted).
MAX_REQUEST_ID: Final = 200


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


class Proxy:
    """The catch-all handler: admission, one or more attempts, streaming the answer."""

    def __init__(
        self,
        registry: Registry,
        admissions: dict[str, Admission],
        client: UpstreamConnections,
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
        #: What a failed attempt holds against its upstream (passive health).
        self.ejector = Ejector(
            registry,
            admissions,
            totals,
            max_fails=settings.max_fails,
            fail_timeout_s=settings.fail_timeout_s,
            max_ejection_percent=settings.max_ejection_percent,
            clock=clock,
        )
        self.attempts = Attempts(client, settings, totals, admissions, self.ejector, clock)
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
        rid = self._request_id(headers.get(_RID))
        fwd = Forwarded(rid, _seconds(headers.get(_FIRST_BYTE)))
        try:
            return await self._handle(request, fwd)
        except GpufleetError as exc:
            self.totals.count(exc.http_status)
            answer = error_response(exc, rid)
            answer.headers[_ATTEMPTS] = str(fwd.attempts)
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

    def _request_id(self, given: str | None) -> str:
        """The caller's ``X-Request-Id`` when it is fit to pass on, else a new one."""
        if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable():
            return given
        self._rid_next += 1
        return f"{self._rid_prefix}-{self._rid_next:x}"

    async def _handle(self, request: web.Request, fwd: Forwarded) -> web.StreamResponse:
        # One deadline from the first byte we handle: the client's upload counts too, so a
        # stalled body cannot hold the request (or a drain) forever.
        deadline = self._clock() + self.settings.timeout_s
        body = fwd.body = await read_body(
            request, self.settings.max_body_bytes, self.settings.timeout_s
        )
        path = request.path
        pool, upstream_path = self._route(path, body)
        if upstream_path == path:
            target = request.raw_path  # as the client encoded it, query included
        else:
            qs = request.query_string
            target = URL.build(path=upstream_path, query_string=qs).raw_path_qs
        method = request.method
        fwd.method_bytes = f"{method} ".encode()
        fwd.target_bytes = target.encode("utf-8", "surrogateescape")
        fwd.headers = self._request_headers(request, fwd.rid, body)
        fwd.no_body = method == "HEAD"
        fwd.llm = method == "POST" and upstream_path.endswith(PROMPT_PATHS)
        admission = self.admissions[pool.name]
        headers = request.headers
        return await self._forward(
            lambda upstream: self.attempts.run(request, upstream, fwd, deadline),
            fwd,
            admission,
            _prompt(admission, upstream_path, body),
            deadline,
            headers.get(self._sticky),
            _priority(headers.get(_PRIORITY)),
            method,
            target,
        )

    async def call(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> web.Response:
        """Proxy a request made in this process (the Batch API's), its answer read whole.

        The same admission (``X-Gpufleet-Priority`` in ``headers`` picks the class),
        policy, retries and accounting as ``handle``, without crossing a socket twice;
        an error is answered as ``handle`` answers it (never raised).
        """
        self.totals.requests += 1
        self.budget.note_request()
        self.active += 1
        given: CIMultiDict[str] = CIMultiDict(headers)
        rid = self._request_id(given.get(_RID))
        fwd = Forwarded(rid, _seconds(given.get(_FIRST_BYTE)))
        try:
            deadline = self._clock() + self.settings.timeout_s
            if body is not None and len(body) > self.settings.max_body_bytes:
                raise PayloadTooLarge(
                    f"request body over the limit of {self.settings.max_body_bytes} bytes"
                )
            fwd.body = body
            path, mark, query = path.partition("?")
            pool, upstream_path = self._route(path, body)
            target = upstream_path + mark + query
            fwd.method_bytes = f"{method} ".encode()
            fwd.target_bytes = target.encode("utf-8", "surrogateescape")
            fwd.headers = _own_headers(given, rid, body, method)
            fwd.no_body = method == "HEAD"
            fwd.llm = method == "POST" and upstream_path.endswith(PROMPT_PATHS)
            admission = self.admissions[pool.name]
            answer = await self._forward(
                lambda upstream: self.attempts.run_whole(upstream, fwd, deadline),
                fwd,
                admission,
                _prompt(admission, upstream_path, body),
                deadline,
                given.get(self._sticky),
                _priority(given.get(_PRIORITY)),
                method,
                target,
            )
            if not isinstance(answer, web.Response):  # run_whole and _give_up make these
                raise RoutingError("an in-process request got a streamed answer")
            return answer
        except GpufleetError as exc:
            self.totals.count(exc.http_status)
            error = error_response(exc, rid)
            error.headers[_ATTEMPTS] = str(fwd.attempts)
            return error
        finally:
            self.active -= 1
            if not self.active and self.idle is not None:
                self.idle.set()

    def _route(self, path: str, body: bytes | None) -> tuple[Pool, str]:
        """The pool a request goes to, and its path there."""
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
        return pool, upstream_path

    async def _forward(
        self,
        send: Callable[[Upstream], Awaitable[web.StreamResponse]],
        fwd: Forwarded,
        admission: Admission,
        prompt: list[int] | None,
        deadline: float,
        key: str | None,
        priority: str,
        method: str,
        target: str,
    ) -> web.StreamResponse:
        """Attempts (``send``) until one answers, none may follow, or no upstream is left."""
        # Upstreams this request must not go back to (a refusal does not count: the
        # upstream takes it again once it has room, which is what Retry-After asks).
        exclude: list[str] = []
        failed: AttemptFailed | None = None
        ran_again = False
        budget = self.budget
        taken = 0
        try:
            while True:
                try:
                    upstream = await admission.acquire(key, exclude, deadline, prompt, priority)
                except (NoHealthyBackend, AdmissionRejected, UpstreamTimeout):
                    if failed is not None:
                        return self._give_up(failed, fwd)
                    raise
                fwd.attempts += 1
                try:
                    return await send(upstream)
                except AttemptFailed as exc:
                    failed = exc
                    if exc.reason != REFUSED:
                        exclude.append(upstream.id)
                    if not self._may_follow(exc, upstream, method, fwd, ran_again):
                        return self._give_up(exc, fwd)
                    taken += 1
                    if exc.may_have_run:
                        ran_again = True
                    self.totals.retry(exc.reason)
                    log.debug(
                        "%s: retrying %s %s (%s on %s)",
                        fwd.rid,
                        method,
                        target,
                        exc,
                        upstream.id,
                    )
        finally:
            for _ in range(taken):
                budget.done()

    def _may_follow(
        self,
        failed: AttemptFailed,
        upstream: Upstream,
        method: str,
        fwd: Forwarded,
        ran_again: bool,
    ) -> bool:
        """Whether another attempt follows ``failed``: allowed, and one taken from the budget."""
        settings = self.settings
        if not may_retry(
            failed,
            attempts=fwd.attempts,
            retries=settings.retries,
            ran_again=ran_again,
            is_gpufleet=upstream.is_gpufleet,
            method=method,
            retry_lost=settings.retry_lost,
        ):
            return False
        if not self.budget.try_take():
            self.totals.budget_exhausted += 1
            return False
        return True

    def _give_up(self, failed: AttemptFailed, fwd: Forwarded) -> web.StreamResponse:
        """No attempt follows ``failed``: answer what it left."""
        if failed.answer is not None:
            self.totals.count(failed.answer.status)
            failed.answer.headers[_ATTEMPTS] = str(fwd.attempts)
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


#: Headers of an in-process request not passed on as given (the proxy sets or uses them).
_OWN_DROP: Final = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "x-request-id",
        "x-request-timeout",
        wire.FIRST_BYTE_TIMEOUT_HEADER.lower(),
    }
)


def _own_headers(headers: CIMultiDict[str], rid: str, body: bytes | None, method: str) -> bytes:
    """The header lines an in-process request passes upstream (all but Host and the
    deadline), as ``request_headers`` makes them for a client's."""
    lines = [
        f"{name}: {value}\r\n".encode("latin-1")
        for name, value in headers.items()
        if name.lower() not in _OWN_DROP
    ]
    lines.append(f"{wire.REQUEST_ID_HEADER}: {rid}\r\n".encode("latin-1"))
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n".encode())
    elif method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: 0\r\n")
    return b"".join(lines)


def _seconds(value: str | None) -> float:
    """A positive number of seconds from a header, else 0."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return seconds if 0 < seconds < 1e9 else 0.0


def _prompt(admission: Admission, upstream_path: str, body: bytes | None) -> list[int] | None:
    """The prompt's blocks where the pool's policy routes by prompt and the body has one."""
    if not body or not admission.uses_prompt:
        return None
    text = prompt_text(upstream_path, body)
    return prompt_blocks(text) if text else None


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
    payload = wire.payload_from_exception(exc, request_id=rid or None)
    headers = {}
    if rid:
        headers[wire.REQUEST_ID_HEADER] = rid
    if exc.retry_after_s is not None:
        headers["Retry-After"] = wire.retry_after_header(exc.retry_after_s)
    return web.Response(
        body=wire.encode(payload),
        status=exc.http_status,
        headers=headers,
        content_type=wire.JSON_CONTENT_TYPE,
    )
