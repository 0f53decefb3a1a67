"""One snapshot of a fleet, read from a router's or a worker's ``/stats``.

A router answers ``wire.RouterStats`` (its ``workers`` are ``wire.UpstreamView``s); a
worker answers ``wire.WorkerStats``. Each is decoded once, into its type. With
``deep=True`` each upstream's own /stats is read as well (batch size, queue, GPU), which
only a gpufleet worker answers: upstreams the router knows as inference engines (vLLM,
SGLang) keep what the router knows of them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import msgspec

from gpufleet import wire
from gpufleet.errors import RequestFailed
from gpufleet.wire.http import PeerClient


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What is known of one worker at one moment (None: not reported)."""

    id: str
    url: str
    pool: str = "default"
    state: str = "unknown"
    in_flight: int | None = None
    queue_depth: int | None = None
    served: int | None = None
    errors: int | None = None
    ejections: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rate: float | None = None
    weight: float | None = None
    batches: int | None = None
    avg_batch_size: float | None = None
    max_batch_size: int | None = None
    device: str | None = None
    pid: int | None = None
    model: str | None = None
    kind: str | None = None
    gpu: wire.GpuReading | None = None
    #: Where the fleet says it runs (router ``labels``: ``placement``, ``node``, ``device``…).
    labels: dict[str, str] = field(default_factory=dict)
    recent_errors: tuple[str, ...] = ()
    #: LLM completion tokens the router counted, and its streams' TTFT p50 (router /stats).
    completion_tokens: int | None = None
    ttft_p50_ms: float | None = None
    #: Items the worker itself counts as served (its /stats; the router counts requests).
    items: int | None = None
    #: Why the worker's own /stats could not be read (deep reads only).
    stats_error: str | None = None


@dataclass(frozen=True, slots=True)
class FleetView:
    """A router's (or a single worker's) view of its workers at ``taken_at``."""

    url: str
    workers: tuple[WorkerView, ...]
    taken_at: float
    #: The router's own /stats (None when ``url`` is a single worker).
    router: wire.RouterStats | None = None

    @property
    def is_router(self) -> bool:
        """True when ``url`` is a router (its workers are its upstreams)."""
        return self.router is not None

    @property
    def kind(self) -> str | None:
        """The model kind the first worker that says so reports."""
        return next((w.kind for w in self.workers if w.kind), None)

    @property
    def model(self) -> str | None:
        """The model name the first worker that says so reports."""
        return next((w.model for w in self.workers if w.model), None)

    def by_id(self) -> dict[str, WorkerView]:
        """The workers keyed by id."""
        return {w.id: w for w in self.workers}


class _Server(msgspec.Struct):
    """Only the ``server`` field, which says whose /stats an answer is."""

    server: str = ""


def _recent_errors(stats: wire.WorkerStats) -> tuple[str, ...]:
    return tuple(f"{e.time} {e.error} {e.message}" for e in stats.recent_errors[-20:])


def _from_upstream(up: wire.UpstreamView) -> WorkerView:
    """What the router knows of one upstream."""
    tokens = up.tokens
    return WorkerView(
        id=up.id,
        url=up.url,
        pool=up.pool,
        state=up.state,
        in_flight=up.in_flight,
        served=up.served,
        errors=up.errors,
        ejections=up.ejections,
        p50_ms=up.latency_ms.p50,
        p99_ms=up.latency_ms.p99,
        rate=up.rate,
        weight=up.weight,
        labels=dict(up.labels),
        completion_tokens=None if tokens is None else tokens.completion,
        ttft_p50_ms=None if tokens is None else tokens.ttft_ms.p50,
    )


def _from_worker(view: WorkerView, stats: wire.WorkerStats, *, own_counts: bool) -> WorkerView:
    """``view`` with what a worker's own /stats adds (with ``own_counts``, its counts too)."""
    view = replace(
        view,
        queue_depth=stats.queue_depth,
        batches=stats.batches,
        avg_batch_size=stats.avg_batch_size,
        max_batch_size=stats.max_batch_size,
        device=stats.device,
        pid=stats.pid,
        model=stats.model,
        kind=stats.kind,
        gpu=stats.gpu,
        recent_errors=_recent_errors(stats),
        items=stats.served,
    )
    if not own_counts:  # behind a router, the router's counts are the ones routed
        return view
    return replace(
        view,
        state=stats.state,
        in_flight=stats.in_flight,
        served=stats.served,
        errors=stats.errors,
        p50_ms=stats.latency_ms.p50,
        p99_ms=stats.latency_ms.p99,
    )


async def read_fleet(
    http: PeerClient, url: str, *, deep: bool = True, timeout_s: float = 3.0
) -> FleetView:
    """Read ``url``'s /stats (and with ``deep``, every upstream's own /stats).

    Raises:
        RequestFailed: ``url`` itself did not answer its /stats with a gpufleet router's
            or worker's.
    """
    base = url.rstrip("/")
    answer = await http.request("GET", base + "/stats", timeout_s=timeout_s)
    if not answer.is_ok:
        raise answer.failure()
    taken_at = time.monotonic()
    server = answer.decode(_Server).server
    if server == wire.WORKER_SERVER_NAME:
        stats = answer.decode(wire.WorkerStats)
        view = _from_worker(WorkerView(id=base, url=base), stats, own_counts=True)
        return FleetView(base, (view,), taken_at)
    if server != wire.ROUTER_SERVER_NAME:
        raise RequestFailed(f"{base}/stats is neither a gpufleet router's nor a worker's")
    router = answer.decode(wire.RouterStats)
    views = [_from_upstream(up) for up in router.workers]
    if deep:
        # An upstream the router knows as an inference engine has no gpufleet /stats.
        engines = {up.id for up in router.workers if up.engine}
        reads = (_deepen(http, v, timeout_s, is_engine=v.id in engines) for v in views)
        views = list(await asyncio.gather(*reads))
    return FleetView(base, tuple(views), taken_at, router)


async def _deepen(
    http: PeerClient, view: WorkerView, timeout_s: float, *, is_engine: bool
) -> WorkerView:
    if is_engine or not view.url.startswith(("http://", "https://")):
        return view
    try:
        stats = await http.get(view.url + "/stats", into=wire.WorkerStats, timeout_s=timeout_s)
    except RequestFailed as exc:
        return replace(view, stats_error=exc.message)
    return _from_worker(view, stats, own_counts=False)


def rates(before: FleetView | None, after: FleetView, field: str = "served") -> dict[str, float]:
    """What each worker counted per second between two views (by id): requests, tokens."""
    if before is None:
        return {}
    dt = after.taken_at - before.taken_at
    if dt <= 0:
        return {}
    old = before.by_id()
    out: dict[str, float] = {}
    for w in after.workers:
        prev = old.get(w.id)
        now_n, prev_n = getattr(w, field), getattr(prev, field, None)
        if prev_n is not None and now_n is not None:
            out[w.id] = max(0, now_n - prev_n) / dt  # a restart resets counters: never < 0
    return out
