"""The router's aiohttp application: owned routes, the proxy catch-all, and lifecycle.

``create_app(cfg)`` builds everything from a ``RouterConfig`` (what the router holds is
a ``state.RouterState``). Other parts add pages
through ``extensions`` (callables that get the app and the ``RouterState`` before the
catch-all route is added); ``dashboard.register`` adds ``/dashboard`` (and the
``/dashboard/stats`` it polls) unless an extension claims that path.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web

from gpufleet import wire
from gpufleet._server import HostGuard
from gpufleet.config.router import RouterConfig
from gpufleet.errors import ErrorCode
from gpufleet.router import dashboard
from gpufleet.router.admin import MAX_BODY as ADMIN_MAX_BODY
from gpufleet.router.admin import AdminAPI
from gpufleet.router.metrics import CONTENT_TYPE, metrics_text
from gpufleet.router.state import RouterState
from gpufleet.router.stats import stats_payload

log = logging.getLogger("gpufleet.router")

STATE_KEY: web.AppKey[RouterState] = web.AppKey("gpufleet_router")
#: The admin API's own application, when ``admin_port`` is set (``main.serve`` binds it).
ADMIN_APP_KEY: web.AppKey[web.Application] = web.AppKey("gpufleet_router_admin")
Extension = Callable[[web.Application, "RouterState"], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router's own errors on ``/v1/…`` in OpenAI's shape; upstream answers untouched.

    An answer the router made itself carries no ``X-Gpufleet-Upstream``; one that passed
    through from an upstream does, and is the upstream's own.
    """
    if "/v1/" not in request.path:  # /v1/… or a pool's PREFIX/v1/…
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        payload = wire.error_payload(exc.reason.replace(" ", ""), exc.text or exc.reason)
        return _json(wire.openai_error(payload, exc.status), status=exc.status)
    if isinstance(response, web.Response) and not response.prepared:
        openai_shaped(response)
    return response


def openai_shaped(response: web.Response) -> None:
    """An error the router made itself, in OpenAI's shape (an upstream's stays as it is)."""
    if (
        response.status >= 400
        and wire.UPSTREAM_HEADER not in response.headers
        and isinstance(response.body, bytes)
    ):
        with contextlib.suppress(wire.WireDecodeError):
            payload = wire.decode(response.body, wire.ErrorBody)
            response.body = wire.encode(wire.openai_error(payload, response.status))


def _json(body: object, status: int = 200) -> web.Response:
    """``body`` (a wire type) as a JSON answer."""
    return web.Response(body=wire.encode(body), status=status, content_type=wire.JSON_CONTENT_TYPE)


def create_app(
    cfg: RouterConfig,
    *,
    extensions: Sequence[Extension] = (),
    rng: random.Random | None = None,
) -> web.Application:
    """The router as an aiohttp application (its background work runs while it serves)."""
    state = RouterState(cfg, rng=rng)
    app = web.Application(
        client_max_size=cfg.max_body_bytes,
        handler_args={"tcp_keepalive": True},
        middlewares=[HostGuard(cfg.host, cfg.allowed_hosts).middleware, openai_errors],
    )
    app[STATE_KEY] = state

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.aclose()

    app.cleanup_ctx.append(lifecycle)

    async def health(request: web.Request) -> web.Response:
        ready = state.registry.is_ready() and not state.draining
        if state.draining:
            status = wire.RouterState.DRAINING
        else:
            status = wire.RouterState.READY if ready else wire.RouterState.NO_READY_UPSTREAM
        return _json(wire.HealthBody(status=status), status=200 if ready else 503)

    async def stats(request: web.Request) -> web.Response:
        payload = stats_payload(
            state.registry,
            state.admissions,
            state.totals,
            policy=cfg.policy,
            draining=state.draining,
            active=state.proxy.active if state.proxy is not None else 0,
        )
        if not state.stats_parts:
            return _json(payload)
        # Parts others add (the Batch API's ``batches``) join the typed body as they are.
        body = wire.to_builtins(payload)
        body.update({name: part() for name, part in state.stats_parts.items()})
        return _json(body)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics_text(state.collector), headers={"Content-Type": CONTENT_TYPE}
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response(await state.models.listing())

    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    admin = AdminAPI(
        state.registry,
        cfg.admin_token,
        state.on_add,
        state.on_remove,
        allowed=tuple(ipaddress.ip_network(c, strict=False) for c in cfg.allowed_upstreams),
    )
    if cfg.admin_port is None:
        admin.register(app)
    else:
        # The admin plane on a listener of its own (``main.serve`` runs it); here every
        # /admin path is answered, never proxied.
        async def elsewhere(request: web.Request) -> web.Response:
            message = "the admin API listens on its own port"
            return _json(wire.error_payload(ErrorCode.NOT_FOUND, message), status=404)

        app.router.add_route("*", "/admin", elsewhere)
        app.router.add_route("*", "/admin/{tail:.*}", elsewhere)
        admin_app = web.Application(
            client_max_size=ADMIN_MAX_BODY,
            middlewares=[HostGuard(cfg.admin_host, cfg.allowed_hosts).middleware],
        )
        admin.register(admin_app)

        async def not_admin(request: web.Request) -> web.Response:
            message = "this listener serves /admin only"
            return _json(wire.error_payload(ErrorCode.NOT_FOUND, message), status=404)

        admin_app.router.add_route("*", "/{tail:.*}", not_admin)
        app[ADMIN_APP_KEY] = admin_app
    for extension in extensions:
        extension(app, state)
    if not any(getattr(r, "canonical", None) == "/dashboard" for r in app.router.resources()):
        dashboard.register(app, state)

    async def proxy(request: web.Request) -> web.StreamResponse:
        assert state.proxy is not None
        return await state.proxy.handle(request)

    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


__all__ = [
    "ADMIN_APP_KEY",
    "STATE_KEY",
    "Extension",
    "Handler",
    "RouterState",
    "create_app",
    "openai_errors",
    "openai_shaped",
]
