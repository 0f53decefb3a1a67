"""Router-wide counters and ``GET /stats`` (``wire.RouterStats``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from gpufleet import wire
from gpufleet._percentile import percentile_ms
from gpufleet.router.admission import PRIORITIES, Admission
from gpufleet.router.policies.prefix import Prefix
from gpufleet.router.pool import Registry
from gpufleet.router.upstream import Upstream


class Totals:
    """Counters of the whole router (plain ints: the hot path only adds to them)."""

    __slots__ = (
        "bad_requests",
        "broken",
        "budget_exhausted",
        "by_class",
        "client_stalled",
        "ejections_held",
        "request_faults",
        "requests",
        "retries_by",
        "started",
    )

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.requests = 0
        #: Malformed requests refused by the HTTP parser (400, connection closed).
        self.bad_requests = 0
        #: Attempts that were followed by another, by why the attempt failed.
        self.retries_by: dict[str, int] = {}
        #: Retries refused by the retry budget (the failure was answered instead).
        self.budget_exhausted = 0
        #: Answers cut after they began (upstream broke, went silent, or the deadline).
        self.broken = 0
        #: Clients dropped for reading nothing for ``client_write_timeout_s``.
        self.client_stalled = 0
        #: 5xx answers the upstream blamed on the request (``X-Gpufleet-Fault: request``):
        #: passed on, not counted against the upstream.
        self.request_faults = 0
        #: Passive ejections not made: they would have left too few upstreams ready.
        self.ejections_held = 0
        #: Answers by status class: index 1..5 for 1xx..5xx.
        self.by_class = [0, 0, 0, 0, 0, 0]
        self.started = clock()

    @property
    def retries(self) -> int:
        """Attempts that were followed by another."""
        return sum(self.retries_by.values())

    def retry(self, reason: str) -> None:
        """Count one retry of an attempt that failed for ``reason``."""
        self.retries_by[reason] = self.retries_by.get(reason, 0) + 1

    def count(self, status: int) -> None:
        """Count one answer with ``status``."""
        self.by_class[min(status // 100, 5)] += 1


def stats_payload(
    registry: Registry,
    admissions: Mapping[str, Admission],
    totals: Totals,
    *,
    policy: str,
    draining: bool,
    active: int = 0,
    now: float | None = None,
) -> wire.RouterStats:
    """The body of ``GET /stats``: a ``workers`` list and the router's totals."""
    ups = registry.all()
    now = time.time() if now is None else now
    if draining:
        state = wire.RouterState.DRAINING
    else:
        state = wire.RouterState.READY if registry.is_ready() else wire.RouterState.STARTING
    return wire.RouterStats(
        server=wire.ROUTER_SERVER_NAME,
        policy=policy,
        state=state,
        uptime_s=round(now - totals.started, 3),
        workers=[upstream_view(u) for u in ups],
        pools={
            name: wire.PoolStats(
                workers=[u.id for u in pool.members],
                ready=len(pool.ready),
                queue_depth=admissions[name].depth if name in admissions else 0,
                classes=class_stats(admissions.get(name)),
                prefix=_prefix_stats(admissions.get(name)),
            )
            for name, pool in registry.pools.items()
        },
        routes=[wire.RouteView(prefix, pool) for prefix, pool in registry.routes],
        totals=wire.RouterTotals(
            requests=totals.requests,
            responses={f"{i}xx": totals.by_class[i] for i in range(1, 6)},
            retries=totals.retries,
            retries_by_reason=dict(totals.retries_by),
            retry_budget_exhausted=totals.budget_exhausted,
            broken_answers=totals.broken,
            clients_stalled=totals.client_stalled,
            request_faults=totals.request_faults,
            bad_requests=totals.bad_requests,
            ejections_held=totals.ejections_held,
            in_flight=sum(u.in_flight for u in ups),
            active=active,
            queue_depth=sum(a.depth for a in admissions.values()),
            queue_depth_by_priority={
                p: sum(a.depth_of(p) for a in admissions.values()) for p in PRIORITIES
            },
            rejected=sum(a.rejected for a in admissions.values()),
            queue_timeouts=sum(a.timed_out for a in admissions.values()),
            ready_workers=sum(1 for u in ups if u.state == wire.UpstreamState.READY),
        ),
    )


def class_stats(admission: Admission | None) -> dict[str, wire.ClassStats]:
    """Per priority class of a pool: waiting now, admitted, and how long they waited."""
    out: dict[str, wire.ClassStats] = {}
    for p in PRIORITIES:
        if admission is None:
            out[p] = wire.ClassStats(0, 0, 0.0, 0.0, 0.0)
            continue
        c = admission.classes[p]
        waits = sorted(c.waits)
        out[p] = wire.ClassStats(
            queue_depth=admission.depth_of(p),
            admitted=c.admitted,
            wait_mean_ms=round(c.wait_total_s / c.admitted * 1000.0, 3) if c.admitted else 0.0,
            wait_p50_ms=percentile_ms(waits, 0.5),
            wait_p99_ms=percentile_ms(waits, 0.99),
        )
    return out


def _prefix_stats(admission: Admission | None) -> wire.PrefixStats | None:
    """The pool's prompt-prefix index, when its policy routes by prefix."""
    policy = admission.policy if admission is not None else None
    if not isinstance(policy, Prefix):
        return None
    index = policy.index
    return wire.PrefixStats(
        entries=len(index),
        approx_bytes=index.approx_bytes,
        max_entries=index.max_entries,
        lookups=index.lookups,
        hits=index.hits,
        evicted=index.evicted,
        affine=policy.affine,
        by_load=policy.by_load,
    )


def upstream_view(u: Upstream) -> wire.UpstreamView:
    """``u`` as a ``/stats`` ``workers`` entry (and an admin answer)."""
    lat = sorted(u.latencies)
    return wire.UpstreamView(
        id=u.id,
        url=u.url,
        pool=u.pool,
        state=wire.UpstreamState(u.state),
        in_flight=u.in_flight,
        served=u.served,
        errors=u.errors,
        ejections=u.ejections,
        latency_ms=wire.LatencyMs(p50=percentile_ms(lat, 0.50), p99=percentile_ms(lat, 0.99)),
        rate=round(u.rate, 3),
        weight=u.weight,
        max_outstanding=u.max_outstanding,
        first_byte_timeout_s=_finite(u.first_byte_timeout_s),
        busy_after_s=_finite(u.busy_after_s),
        waiting=len(u.waiting),
        suspect=u.suspect,
        gpufleet_worker=u.is_gpufleet,
        engine=u.engine or None,
        tokens=None if u.tokens is None else u.tokens.snapshot(),
        engine_load=(
            None
            if u.engine_load is None
            else wire.EngineLoad(running=u.engine_load[0], waiting=u.engine_load[1])
        ),
        labels=dict(u.labels),
    )


def _finite(value: float) -> float | None:
    """``value`` rounded, or None while it is not learned (inf)."""
    return None if math.isinf(value) else round(value, 3)
