"""``/admin/workers``: list, add, drain and remove upstreams at run time (Bearer token).

With no token configured the whole API answers 404, as if it did not exist. Only
``http(s)`` URLs are accepted. Adding the same URL to the same pool again answers the
existing entry (200, its weight and labels updated), so a supervisor can repeat a call
safely. ``labels`` (string to string) say where an upstream runs (a Ray node, a GPU); the
router only shows them in ``/stats``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from gpufleet.errors import ConfigError
from gpufleet.router.pool import DEFAULT_POOL, Registry, WorkerSpec, check_url, parse_weight
from gpufleet.router.upstream import DRAINING, STARTING, Upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


class AdminAPI:
    """The admin routes; ``on_add`` starts probing a new upstream."""

    def __init__(
        self,
        registry: Registry,
        token: str | None,
        on_add: Callable[[Upstream], None],
        on_remove: Callable[[Upstream], None] | None = None,
    ) -> None:
        self.registry = registry
        self._token = token.encode() if token else None
        self._on_add = on_add
        self._on_remove = on_remove

    def register(self, app: web.Application) -> None:
        """Add the admin routes to ``app``."""
        app.router.add_get("/admin/workers", self._guard(self.list))
        app.router.add_post("/admin/workers", self._guard(self.add))
        app.router.add_post("/admin/workers/{id}/drain", self._guard(self.drain))
        app.router.add_delete("/admin/workers/{id}", self._guard(self.remove))

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._token is None:
                return _error(404, "NotFound", "the admin API is off (no admin token set)")
            auth = request.headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self._token
            ):
                response = _error(401, "Unauthorized", "admin calls need a valid Bearer token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="gpufleet-router"'
                return response
            return await handler(request)

        return guarded

    async def list(self, request: web.Request) -> web.Response:
        """``GET /admin/workers``."""
        return web.json_response({"workers": [u.snapshot() for u in self.registry.all()]})

    async def add(self, request: web.Request) -> web.Response:
        """``POST /admin/workers`` ``{"url", "weight"?, "pool"?, "labels"?}``."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "BadRequest", "the body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            return _error(400, "BadRequest", 'the body must be {"url": ..., "weight"?, "pool"?}')
        pool = body.get("pool", DEFAULT_POOL)
        weight = body.get("weight", 1.0)
        if not isinstance(pool, str) or not pool or "@" in pool:
            return _error(400, "BadRequest", "pool must be a non-empty name")
        if isinstance(weight, bool) or not isinstance(weight, int | float | str):
            return _error(400, "BadRequest", "weight must be a number")
        labels = body.get("labels")
        if labels is not None and not (
            isinstance(labels, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            return _error(400, "BadRequest", "labels must map strings to strings")
        try:
            url = check_url(body["url"])
            weight_value = parse_weight(str(weight))
        except ConfigError as exc:
            return _error(400, "BadRequest", str(exc))
        existing = self.registry.find(url, pool)
        if existing is not None:
            existing.weight = weight_value
            if labels is not None:
                existing.labels = dict(labels)
            if existing.state == DRAINING:  # added again: back into rotation after a probe
                self.registry.set_state(existing, STARTING)
                self._on_add(existing)
            return web.json_response(existing.snapshot(), status=200)
        upstream = self.registry.add(WorkerSpec(url, pool, weight_value))
        upstream.labels = dict(labels or {})
        self._on_add(upstream)
        return web.json_response(upstream.snapshot(), status=201)

    def _lookup(self, request: web.Request) -> Upstream | None:
        return self.registry.by_id.get(request.match_info["id"])

    async def drain(self, request: web.Request) -> web.Response:
        """``POST /admin/workers/{id}/drain``: no new requests; in-flight ones finish."""
        upstream = self._lookup(request)
        if upstream is None:
            return _error(404, "NotFound", f"no worker {request.match_info['id']!r}")
        self.registry.set_state(upstream, DRAINING)
        return web.json_response(upstream.snapshot())

    async def remove(self, request: web.Request) -> web.Response:
        """``DELETE /admin/workers/{id}``: out of the pool now; in-flight ones finish."""
        upstream = self._lookup(request)
        if upstream is None:
            return _error(404, "NotFound", f"no worker {request.match_info['id']!r}")
        self.registry.remove(upstream)
        if self._on_remove is not None:
            self._on_remove(upstream)
        return web.json_response(upstream.snapshot())
