"""``/admin/workers``: list, add, drain and remove upstreams at run time (Bearer token).

With no token configured the whole API answers 404, as if it did not exist. Every path
under ``/admin`` is the API's, whatever the method: one it does not define is a 404 or
405 JSON answer here, never proxied (an upstream would get the token). Only ``http(s)``
URLs are accepted. Adding the same URL to the same pool again answers the
existing entry (200, its weight and labels updated), so a supervisor can repeat a call
safely. ``labels`` (string to string) say where an upstream runs (a Ray node, a GPU); the
router only shows them in ``/stats``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from gpufleet import wire
from gpufleet._server import refuse_and_close
from gpufleet.errors import ConfigError, ErrorCode
from gpufleet.router.pool import (
    Registry,
    WorkerSpec,
    address_problem,
    check_url,
    parse_weight,
)
from gpufleet.router.stats import upstream_view
from gpufleet.router.upstream import Upstream
from gpufleet.wire import UpstreamState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The largest admin request body.
MAX_BODY: Final = 64 * 1024
#: Each admin path and the methods it takes (for 405 and ``Allow``).
_METHODS: Final = (
    (re.compile(r"/admin/workers/?"), "GET, POST"),
    (re.compile(r"/admin/workers/[^/]+/drain/?"), "POST"),
    (re.compile(r"/admin/workers/[^/]+/?"), "DELETE"),
)


def _error(status: int, error: ErrorCode, message: str) -> web.Response:
    return _answer(wire.error_payload(error, message), status)


def _answer(body: object, status: int = 200) -> web.Response:
    return web.Response(body=wire.encode(body), status=status, content_type=wire.JSON_CONTENT_TYPE)


class AdminAPI:
    """The admin routes; ``on_add`` starts probing a new upstream."""

    def __init__(
        self,
        registry: Registry,
        token: str | None,
        on_add: Callable[[Upstream], None],
        on_remove: Callable[[Upstream], None] | None = None,
        *,
        allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
    ) -> None:
        self.registry = registry
        #: Networks admin-added upstreams must resolve into (empty: any sane address).
        self.allowed = allowed
        self._token = token.encode() if token else None
        self._on_add = on_add
        self._on_remove = on_remove

    def register(self, app: web.Application) -> None:
        """Add the admin routes to ``app``."""
        app.router.add_get("/admin/workers", self._guard(self.list))
        app.router.add_post("/admin/workers", self._guard(self.add))
        app.router.add_post("/admin/workers/{id}/drain", self._guard(self.drain))
        app.router.add_delete("/admin/workers/{id}", self._guard(self.remove))
        # Whatever else is under /admin is answered here, never proxied.
        app.router.add_route("*", "/admin", self._guard(self.unknown))
        app.router.add_route("*", "/admin/{tail:.*}", self._guard(self.unknown))

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._token is None:
                return _error(404, ErrorCode.NOT_FOUND, "the admin API is off (no admin token set)")
            auth = request.headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            # Header bytes that are not UTF-8 come as surrogates: back to the same bytes.
            given_bytes = given.strip().encode("utf-8", "surrogateescape")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, self._token):
                response = _error(
                    401, ErrorCode.UNAUTHORIZED, "admin calls need a valid Bearer token"
                )
                response.headers["WWW-Authenticate"] = 'Bearer realm="gpufleet-router"'
                return response
            return await handler(request)

        return guarded

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        """Any other ``/admin`` call: 405 (with ``Allow``) for a known path, else 404."""
        path = request.path
        for pattern, allow in _METHODS:
            if pattern.fullmatch(path):
                response = _error(
                    405, ErrorCode.METHOD_NOT_ALLOWED, f"{path} takes {allow}, not {request.method}"
                )
                response.headers["Allow"] = allow
                return await _unread_body(request, response)
        return await _unread_body(
            request, _error(404, ErrorCode.NOT_FOUND, f"no admin call at {path}")
        )

    async def list(self, request: web.Request) -> web.Response:
        """``GET /admin/workers``."""
        return _answer(wire.UpstreamList([upstream_view(u) for u in self.registry.all()]))

    async def add(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/workers`` ``{"url", "weight"?, "pool"?, "labels"?}``."""
        raw = await _read_body(request)
        if isinstance(raw, web.StreamResponse):
            return raw
        try:
            body = msgspec.json.decode(raw, type=wire.AddUpstream)
        except msgspec.ValidationError as exc:
            shape = '{"url", "pool"?, "weight"?, "labels"?}'
            return _error(400, ErrorCode.BAD_REQUEST, f"the body must be {shape}: {exc}")
        except (msgspec.DecodeError, RecursionError):
            return _error(400, ErrorCode.BAD_REQUEST, "the body must be JSON")
        pool = body.pool
        if not pool or "@" in pool:
            return _error(400, ErrorCode.BAD_REQUEST, "pool must be a non-empty name")
        labels = body.labels
        try:
            url = check_url(body.url)
            weight_value = parse_weight(str(1.0 if body.weight is None else body.weight))
        except ConfigError as exc:
            return _error(400, ErrorCode.BAD_REQUEST, str(exc))
        problem = await self._target_problem(url)
        if problem is not None:
            return _error(400, ErrorCode.BAD_REQUEST, f"upstream {url!r} refused: {problem}")
        existing = self.registry.find(url, pool)
        if existing is not None:
            existing.weight = weight_value
            if labels is not None:
                existing.labels = dict(labels)
            if existing.state == UpstreamState.DRAINING:  # added again: back into rotation
                self.registry.set_state(existing, UpstreamState.STARTING)
                self._on_add(existing)
            return _answer(upstream_view(existing), status=200)
        upstream = self.registry.add(WorkerSpec(url, pool, weight_value))
        upstream.labels = dict(labels or {})
        self._on_add(upstream)
        return _answer(upstream_view(upstream), status=201)

    async def _target_problem(self, url: str) -> str | None:
        """Why the admin API will not add ``url`` (what its host resolves to), or None.

        A host name is resolved now and each of its addresses checked (a name may point at
        a metadata service). The router connects later, by name: a DNS answer that changes
        meanwhile is not seen here; ``--allow-upstream`` and the network are the bound.
        """
        parsed = URL(url)
        host = (parsed.raw_host or "").split("%", 1)[0]
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                async with asyncio.timeout(2.0):
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        host, parsed.port, type=socket.SOCK_STREAM
                    )
            except (OSError, TimeoutError, UnicodeError) as exc:
                return f"its host does not resolve ({exc or type(exc).__name__})"
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for ip in addresses:
            problem = address_problem(ip)
            if problem is not None:
                return f"{ip} is {problem}"
            if not ip.is_loopback and not any(ip in n for n in self.allowed):
                return f"{ip} is not loopback and outside --allow-upstream"
        return None

    def _lookup(self, request: web.Request) -> Upstream | None:
        return self.registry.by_id.get(request.match_info["id"])

    async def drain(self, request: web.Request) -> web.Response:
        """``POST /admin/workers/{id}/drain``: no new requests; in-flight ones finish."""
        upstream = self._lookup(request)
        if upstream is None:
            return _error(404, ErrorCode.NOT_FOUND, f"no worker {request.match_info['id']!r}")
        self.registry.set_state(upstream, UpstreamState.DRAINING)
        return _answer(upstream_view(upstream))

    async def remove(self, request: web.Request) -> web.Response:
        """``DELETE /admin/workers/{id}``: out of the pool now; in-flight ones finish."""
        upstream = self._lookup(request)
        if upstream is None:
            return _error(404, ErrorCode.NOT_FOUND, f"no worker {request.match_info['id']!r}")
        self.registry.remove(upstream)
        if self._on_remove is not None:
            self._on_remove(upstream)
        return _answer(upstream_view(upstream))


async def _read_body(request: web.Request) -> bytes | web.StreamResponse:
    """The request body, or the 413 that refused it (over ``MAX_BODY``)."""
    too_large = _error(
        413, ErrorCode.PAYLOAD_TOO_LARGE, f"admin bodies are at most {MAX_BODY} bytes"
    )
    length = request.content_length
    if length is not None and length > MAX_BODY:
        return await refuse_and_close(request, too_large)
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > MAX_BODY:
                return await refuse_and_close(request, too_large)
            chunks.append(chunk)
    except HttpProcessingError as exc:
        return await refuse_and_close(
            request, _error(400, ErrorCode.BAD_REQUEST, f"malformed request body: {exc.message}")
        )
    return b"".join(chunks)


async def _unread_body(request: web.Request, response: web.Response) -> web.StreamResponse:
    """``response``, closing the connection if a body is still arriving (it is not read)."""
    if request.content.is_eof():
        return response
    return await refuse_and_close(request, response)
