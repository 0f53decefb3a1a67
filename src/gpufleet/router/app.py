"""The router's aiohttp application: owned routes, the proxy catch-all, and lifecycle.

``create_app(cfg)`` builds everything from a ``RouterConfig``. Other parts add pages
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
from gpufleet.router.admission import Admission
from gpufleet.router.health import HealthChecker, HealthSettings
from gpufleet.router.http1 import UpstreamConnections
from gpufleet.router.metrics import CONTENT_TYPE, RouterCollector, metrics_text
from gpufleet.router.models import ModelCatalog
from gpufleet.router.policies import make_policy
from gpufleet.router.pool import Pool, Registry, parse_route, parse_worker
from gpufleet.router.proxy import Proxy, ProxySettings
from gpufleet.router.retry_budget import RetryBudget
from gpufleet.router.stats import Totals, stats_payload
from gpufleet.router.upstream import Upstream

log = logging.getLogger("gpufleet.router")

STATE_KEY: web.AppKey[RouterState] = web.AppKey("gpufleet_router")
#: The admin API's own application, when ``admin_port`` is set (``main.serve`` binds it).
ADMIN_APP_KEY: web.AppKey[web.Application] = web.AppKey("gpufleet_router_admin")
Extension = Callable[[web.Application, "RouterState"], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RouterState:
    """Everything one router holds: the registry, queues, proxy, health checker."""

    def __init__(self, cfg: RouterConfig, *, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.rng = rng or random.Random()
        self.registry = Registry(
            max_outstanding=cfg.max_outstanding, first_byte_timeout_s=cfg.first_byte_timeout_s
        )
        self.admissions: dict[str, Admission] = {}
        self.totals = Totals()
        self.draining = False
        for text in cfg.routes:
            self.registry.add_route(*parse_route(text))
        for text in cfg.workers:
            self.registry.add(parse_worker(text))
        self.registry.on_change = self._on_change
        self.health = HealthChecker(
            self.registry,
            HealthSettings(
                interval_s=cfg.health_interval_s,
                timeout_s=cfg.health_timeout_s,
                path=cfg.health_path,
                eject_after=cfg.eject_after,
                readmit_after=cfg.readmit_after,
            ),
        )
        self.client: UpstreamConnections | None = None
        self.proxy: Proxy | None = None
        #: Extensions' hooks: called with the router's own URL once it listens (``main``),
        #: when it starts draining, and for more ``/stats`` fields.
        self.on_listen: list[Callable[[str], Awaitable[None]]] = []
        self.on_drain: list[Callable[[], None]] = []
        self.stats_parts: dict[str, Callable[[], object]] = {}
        self.collector = RouterCollector(self.registry, self.admissions, self.totals)
        self.models = ModelCatalog(self.registry)

    def admission(self, pool: Pool) -> Admission:
        """The admission queue of ``pool`` (made on first use, with its own policy)."""
        found = self.admissions.get(pool.name)
        if found is None:
            found = self.admissions[pool.name] = Admission(
                pool,
                make_policy(
                    self.cfg.policy,
                    pool,
                    random.Random(self.rng.random()),
                    prefix_cache_bytes=int(self.cfg.prefix_cache_mb * 2**20),
                    prefix_ttl_s=self.cfg.prefix_ttl_s,
                ),
                max_queue=self.cfg.max_queue,
                queue_timeout_s=self.cfg.queue_timeout_s,
                batch_share=self.cfg.batch_share_percent / 100.0,
            )
        return found

    def _on_change(self, pool: Pool) -> None:
        admission = self.admission(pool)
        if pool.ready:
            admission.dispatch()
        else:
            admission.fail_all()

    def on_add(self, upstream: Upstream) -> None:
        """A new upstream: give its pool a queue and probe it right away."""
        self.admission(self.registry.pool(upstream.pool))
        self.health.probe_soon(upstream)

    def on_remove(self, upstream: Upstream) -> None:
        """An upstream removed: close its kept connections (unless another pool uses it)."""
        if self.client is not None and not any(
            u.base == upstream.base for u in self.registry.all()
        ):
            self.client.discard(upstream.base)

    def _on_round(self) -> None:
        """After each health round: close idle sockets past keep-alive; with several
        pools, refresh which pool serves which model (routing by ``model``)."""
        if self.client is not None:
            self.client.sweep()
        if len(self.registry.pools) > 1:
            self.models.refresh_soon()

    async def start(self) -> None:
        """Open the upstream connection pool and start probing."""
        for pool in list(self.registry.pools.values()):
            self.admission(pool)
        self.client = UpstreamConnections(connect_timeout_s=self.cfg.connect_timeout_s)
        self.health.on_round = self._on_round
        cfg = self.cfg
        self.proxy = Proxy(
            self.registry,
            self.admissions,
            self.client,
            ProxySettings(
                timeout_s=cfg.timeout_s,
                retries=cfg.retries,
                max_body_bytes=cfg.max_body_bytes,
                max_fails=cfg.max_fails,
                fail_timeout_s=cfg.fail_timeout_s,
                sticky_header=cfg.sticky_header,
                stream_idle_timeout_s=cfg.stream_idle_timeout_s,
                client_write_timeout_s=cfg.client_write_timeout_s,
                retry_lost=cfg.retry_lost,
                max_ejection_percent=cfg.max_ejection_percent,
                admin_token=cfg.admin_token,
                forward_auth=cfg.forward_auth,
            ),
            self.totals,
            budget=RetryBudget(cfg.retry_budget_percent, cfg.retry_budget_min),
            models=self.models,
        )
        await self.health.start()
        for upstream in self.registry.all():
            self.health.probe_soon(upstream)

    async def aclose(self) -> None:
        """Stop probing, close queues and connections."""
        await self.health.aclose()
        for admission in self.admissions.values():
            admission.close()
        if self.client is not None:
            self.client.close()
        await self.models.aclose()


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
