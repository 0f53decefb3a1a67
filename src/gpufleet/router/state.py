"""``RouterState``: everything one router holds, and its lifecycle.

The registry of pools and upstreams, an admission queue per pool (made on first use,
with its own policy), the totals, the health checker, the upstream connections and the
proxy (made at ``start``), the model catalog, and the hooks extensions add (``on_listen``,
``on_drain``, ``stats_parts``). ``app.create_app`` builds one and serves it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from gpufleet.config.router import RouterConfig
from gpufleet.router.admission import Admission
from gpufleet.router.health import HealthChecker, HealthSettings
from gpufleet.router.http1 import UpstreamConnections
from gpufleet.router.metrics import RouterCollector
from gpufleet.router.models import ModelCatalog
from gpufleet.router.policies import make_policy
from gpufleet.router.pool import Pool, Registry, parse_route, parse_worker
from gpufleet.router.proxy import Proxy, ProxySettings
from gpufleet.router.retry_budget import RetryBudget
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import Upstream


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
            ProxySettings.of(cfg),
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


__all__ = ["RouterState"]
