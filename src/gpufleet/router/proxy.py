"""Forward one request to an upstream, every attempt bounded in time; retry honestly.

A request is read whole first (bounded by ``--max-body-mb``): a retry can replay it, and
a client that uploads slowly never holds an upstream's slot. The answer streams back
chunk by chunk.

``Proxy`` reads and routes the request (what its own headers ask: ``request_head``) and
hands it to ``retry_loop``; one attempt is ``attempt.Attempts.run``; why an attempt
failed and whether another may follow is ``retries``; what a failure holds against the
upstream is ``ejection``; passing an answer on is ``relay``. Every retry draws from the
retry budget.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, istr
from yarl import URL

from gpufleet import wire
from gpufleet._server import refuse_and_close
from gpufleet.config.router import RouterConfig
from gpufleet.errors import GpufleetError, PayloadTooLarge, RequestTimeout, RoutingError
from gpufleet.router.admission import Admission
from gpufleet.router.attempt import Attempts
from gpufleet.router.ejection import Ejector
from gpufleet.router.forwarded import Forwarded, read_body
from gpufleet.router.headers import request_headers
from gpufleet.router.http1 import UpstreamConnections
from gpufleet.router.models import ModelCatalog, model_of
from gpufleet.router.pool import DEFAULT_POOL, Pool, Registry
from gpufleet.router.prefix import PROMPT_PATHS, prompt_blocks, prompt_text
from gpufleet.router.request_head import RequestIds, own_headers, priority, seconds
from gpufleet.router.retry_budget import RetryBudget
from gpufleet.router.retry_loop import Ask, RetryLoop, Send
from gpufleet.router.stats import Totals

_RID: Final = istr(wire.REQUEST_ID_HEADER)
_ATTEMPTS: Final = istr(wire.ATTEMPTS_HEADER)
_FIRST_BYTE: Final = istr(wire.FIRST_BYTE_TIMEOUT_HEADER)
_PRIORITY: Final = istr(wire.PRIORITY_HEADER)


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

    @classmethod
    def of(cls, cfg: RouterConfig) -> ProxySettings:
        """The settings of ``cfg`` (each field is the router setting of the same name)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


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
        self.retry_loop = RetryLoop(settings, totals, self.budget)
        self._clock = clock
        self._ids = RequestIds()
        self._sticky = istr(settings.sticky_header)
        self._admin_token = (settings.admin_token or "").encode()
        #: Requests being proxied now, and an event set when that drops to 0 (drain).
        self.active = 0
        self.idle: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxy ``request`` to an upstream of the pool its path routes to."""
        fwd = self._start(request.headers)
        try:
            return await self._handle(request, fwd)
        except GpufleetError as exc:
            answer = self._error(exc, fwd)
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
            self._end()

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
        fwd.headers = self._request_headers(request, fwd.rid, body)
        return await self._forward(
            lambda upstream: self.attempts.run(request, upstream, fwd, deadline),
            fwd,
            request.method,
            (pool, upstream_path, target),
            request.headers,
            deadline,
        )

    async def call(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> web.Response:
        """Proxy a request made in this process (the Batch API's), its answer read whole.

        The same admission (``X-Gpufleet-Priority`` in ``headers`` picks the class),
        policy, retries and accounting as ``handle``, without crossing a socket twice;
        an error is answered as ``handle`` answers it (never raised).
        """
        given: CIMultiDict[str] = CIMultiDict(headers)
        fwd = self._start(given)
        try:
            deadline = self._clock() + self.settings.timeout_s
            if body is not None and len(body) > self.settings.max_body_bytes:
                raise PayloadTooLarge(
                    f"request body over the limit of {self.settings.max_body_bytes} bytes"
                )
            fwd.body = body
            path, mark, query = path.partition("?")
            pool, upstream_path = self._route(path, body)
            fwd.headers = own_headers(given, fwd.rid, body, method)
            answer = await self._forward(
                lambda upstream: self.attempts.run_whole(upstream, fwd, deadline),
                fwd,
                method,
                (pool, upstream_path, upstream_path + mark + query),
                given,
                deadline,
            )
            if not isinstance(answer, web.Response):  # run_whole and _give_up make these
                raise RoutingError("an in-process request got a streamed answer")
            return answer
        except GpufleetError as exc:
            return self._error(exc, fwd)
        finally:
            self._end()

    def _start(self, headers: Mapping[str, str]) -> Forwarded:
        """A request comes in: count it, and what it carries through its attempts."""
        self.totals.requests += 1
        self.budget.note_request()
        self.active += 1
        return Forwarded(self._ids.take(headers.get(_RID)), seconds(headers.get(_FIRST_BYTE)))

    def _end(self) -> None:
        """A request is answered: one fewer in flight (a drain waits for none)."""
        self.active -= 1
        if not self.active and self.idle is not None:
            self.idle.set()

    def _error(self, exc: GpufleetError, fwd: Forwarded) -> web.Response:
        """The answer to a request that ended in one of our errors, counted."""
        self.totals.count(exc.http_status)
        answer = error_response(exc, fwd.rid)
        answer.headers[_ATTEMPTS] = str(fwd.attempts)
        return answer

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
        send: Send,
        fwd: Forwarded,
        method: str,
        routed: tuple[Pool, str, str],
        headers: Mapping[str, str],
        deadline: float,
    ) -> web.StreamResponse:
        """Run the attempts of a routed request (its pool, its path there and its target)."""
        pool, upstream_path, target = routed
        fwd.method_bytes = f"{method} ".encode()
        fwd.target_bytes = target.encode("utf-8", "surrogateescape")
        fwd.no_body = method == "HEAD"
        fwd.llm = method == "POST" and upstream_path.endswith(PROMPT_PATHS)
        admission = self.admissions[pool.name]
        ask = Ask(
            admission,
            _prompt(admission, upstream_path, fwd.body),
            headers.get(self._sticky),
            priority(headers.get(_PRIORITY)),
            deadline,
        )
        return await self.retry_loop.run(send, fwd, ask, method, target)

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


def _prompt(admission: Admission, upstream_path: str, body: bytes | None) -> list[int] | None:
    """The prompt's blocks where the pool's policy routes by prompt and the body has one."""
    if not body or not admission.uses_prompt:
        return None
    text = prompt_text(upstream_path, body)
    return prompt_blocks(text) if text else None


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
