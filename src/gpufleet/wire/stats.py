"""``GET /stats`` of a worker and of the router, and one upstream as the router shows it.

Every field is what the producer emits, named as on the wire; the producers build these
types (``WorkerService.stats``, ``Upstream.snapshot``, ``router.stats.stats_payload``) and
readers decode them once with ``wire.decode``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from gpufleet.wire.states import RouterState, UpstreamState, WorkerState

#: ``server`` field of a gpufleet worker's /stats.
WORKER_SERVER_NAME: Final = "gpufleet-worker"
#: ``server`` field of the router's /stats.
ROUTER_SERVER_NAME: Final = "gpufleet-router"


class LatencyMs(msgspec.Struct):
    """p50 and p99 in milliseconds (0 while nothing was measured)."""

    p50: float
    p99: float


class GpuReading(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One NVML reading of a worker's GPU; a field NVML refuses is left out."""

    index: int | None = None
    name: str | None = None
    uuid: str | None = None
    utilization_pct: int | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature_c: int | None = None
    power_w: float | None = None


class RecentError(msgspec.Struct):
    """One failed request in a worker's ``recent_errors``."""

    time: str  # UTC, ISO 8601 to the second
    error: str  # an ErrorCode, or the HTTP reason for what the HTTP layer refused
    message: str
    status: int
    path: str


class WorkerStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A worker's ``GET /stats``."""

    server: str  # always WORKER_SERVER_NAME
    model: str
    kind: str
    device: str
    pid: int
    #: "stalled" while the device thread is stuck (see ``stall_reason``).
    state: WorkerState
    stall_reason: str | None
    stalls: int  # times the worker turned stalled
    stall_timeout_s: float  # 0: the stall detector is off
    queue_depth: int
    in_flight: int
    served: int
    errors: int
    rejected: int  # answered 503 (queue full) without running
    dropped: int  # left the queue unserved (caller gone, deadline passed)
    failed_items: int
    batches: int
    avg_batch_size: float
    max_batch_size: int  # effective: lowered after an out-of-memory split
    configured_max_batch_size: int
    oom_splits: int
    isolation_splits: int
    max_queue: int
    streams: int  # open now, each holding one queue slot
    streams_closed: int  # model generators closed because the caller left
    latency_ms: LatencyMs
    uptime_s: float
    recent_errors: list[RecentError]
    gpu: GpuReading | None = None  # only on a CUDA device NVML can read


class WorkerCapacity(msgspec.Struct):
    """The part of a worker's ``/stats`` a router reads to learn its cap (decodes a whole
    ``WorkerStats`` too; ``server`` tells a gpufleet worker)."""

    server: str
    max_batch_size: int


class TokenStats(msgspec.Struct):
    """Tokens an LLM upstream's answers reported (``usage``), and their timing."""

    answers: int
    prompt: int
    completion: int
    ttft_ms: LatencyMs
    itl_ms: LatencyMs


class EngineLoad(msgspec.Struct):
    """An inference engine's own queue, read from its metrics."""

    running: int
    waiting: int


class UpstreamView(msgspec.Struct, kw_only=True):
    """One upstream as the router shows it: ``/stats`` ``workers`` and admin answers."""

    id: str
    url: str
    pool: str
    state: UpstreamState
    in_flight: int
    served: int
    errors: int
    ejections: int
    latency_ms: LatencyMs
    rate: float
    weight: float
    max_outstanding: int
    first_byte_timeout_s: float | None  # None until learned
    busy_after_s: float | None
    waiting: int
    suspect: bool
    gpufleet_worker: bool
    engine: str | None
    tokens: TokenStats | None
    engine_load: EngineLoad | None
    labels: dict[str, str]


class ClassStats(msgspec.Struct):
    """One priority class of a pool's admission queue."""

    queue_depth: int
    admitted: int
    wait_mean_ms: float
    wait_p50_ms: float
    wait_p99_ms: float


class PrefixStats(msgspec.Struct):
    """A pool's prompt-prefix index, when its policy routes by prefix."""

    entries: int
    approx_bytes: int
    max_entries: int
    lookups: int
    hits: int
    evicted: int
    affine: int
    by_load: int


class PoolStats(msgspec.Struct):
    """One named pool of upstreams."""

    workers: list[str]  # upstream ids
    ready: int
    queue_depth: int
    classes: dict[str, ClassStats]  # by priority class (interactive, batch)
    prefix: PrefixStats | None


class RouteView(msgspec.Struct):
    """A path prefix and the pool it routes to."""

    prefix: str
    pool: str


class RouterTotals(msgspec.Struct, kw_only=True):
    """Counters of the whole router."""

    requests: int
    responses: dict[str, int]  # "1xx" .. "5xx"
    retries: int
    retries_by_reason: dict[str, int]
    retry_budget_exhausted: int
    broken_answers: int
    clients_stalled: int
    request_faults: int
    bad_requests: int
    ejections_held: int
    in_flight: int
    active: int
    queue_depth: int
    queue_depth_by_priority: dict[str, int]
    rejected: int
    queue_timeouts: int
    ready_workers: int


class RouterStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The router's ``GET /stats``.

    ``batches`` is there when the router runs the Batch API (its own part, see
    ``gpufleet.batches``).
    """

    server: str  # always ROUTER_SERVER_NAME
    policy: str
    state: RouterState
    uptime_s: float
    workers: list[UpstreamView]
    pools: dict[str, PoolStats]
    routes: list[RouteView]
    totals: RouterTotals
    batches: dict[str, object] | None = None


__all__ = [
    "ROUTER_SERVER_NAME",
    "WORKER_SERVER_NAME",
    "ClassStats",
    "EngineLoad",
    "GpuReading",
    "LatencyMs",
    "PoolStats",
    "PrefixStats",
    "RecentError",
    "RouteView",
    "RouterStats",
    "RouterTotals",
    "TokenStats",
    "UpstreamView",
    "WorkerCapacity",
    "WorkerStats",
]
