"""What crosses a process boundary: header names, typed bodies, states and error codes.

The router and the worker never import each other; this package is their contract, and
the client's. Bodies are ``msgspec.Struct``s (``bodies``: errors and /health; ``stats``:
/stats of a worker and the router; ``admin``: the admin API), states are ``StrEnum``s
(``states``), error codes are ``gpufleet.errors.ErrorCode``; error answers and
``Retry-After`` are ``error_answers``. Producers build these types
and ``encode`` them; readers ``decode`` a peer's body once into the type they expect.
"""

from __future__ import annotations

from typing import Final

from gpufleet.errors import ErrorCode
from gpufleet.wire.admin import AddUpstream, UpstreamList
from gpufleet.wire.bodies import (
    AnyErrorBody,
    ErrorBody,
    HealthBody,
    OpenAIError,
    OpenAIErrorBody,
)
from gpufleet.wire.codec import (
    MAX_JSON_DEPTH,
    JSONTooDeep,
    WireDecodeError,
    decode,
    decode_json,
    encode,
    to_builtins,
)
from gpufleet.wire.error_answers import (
    OPENAI_PREFIX,
    error_name,
    error_name_of,
    error_payload,
    is_openai_path,
    is_overloaded_body,
    openai_error,
    parse_retry_after,
    payload_from_exception,
    retry_after_header,
)
from gpufleet.wire.states import (
    FleetPhase,
    MemberOutcome,
    MemberRole,
    MemberState,
    RouterState,
    UpstreamState,
    WorkerState,
)
from gpufleet.wire.stats import (
    ROUTER_SERVER_NAME,
    WORKER_SERVER_NAME,
    ClassStats,
    EngineLoad,
    GpuReading,
    LatencyMs,
    PoolStats,
    PrefixStats,
    RecentError,
    RouterStats,
    RouterTotals,
    RouteView,
    TokenStats,
    UpstreamView,
    WorkerCapacity,
    WorkerStats,
)

# Headers -------------------------------------------------------------------------------

REQUEST_ID_HEADER: Final = "X-Request-Id"
#: Seconds the caller is still willing to wait (relative, so clocks need not agree).
TIMEOUT_HEADER: Final = "X-Request-Timeout"
#: Absolute deadline as Unix epoch seconds (used when both ends share a clock).
DEADLINE_HEADER: Final = "X-Request-Deadline"
#: Set by a gpufleet worker on every answer, so a router knows who it talks to.
SERVER_HEADER: Final = "X-Gpufleet-Worker"
#: The upstream that served a proxied request (set by the router on the answer).
UPSTREAM_HEADER: Final = "X-Gpufleet-Upstream"
#: How many attempts the router made for this answer (set by the router on every answer).
ATTEMPTS_HEADER: Final = "X-Gpufleet-Attempts"
#: Seconds one attempt may wait for its answer to begin, for this request (a caller that
#: knows its request is long; at most the request's deadline).
FIRST_BYTE_TIMEOUT_HEADER: Final = "X-Gpufleet-First-Byte-Timeout"
#: Session key for the sticky policy (default; configurable).
SESSION_HEADER: Final = "X-Session-Id"
#: The router's admission class of a request: ``interactive`` (the default, served first)
#: or ``batch`` (fills the capacity interactive traffic leaves).
PRIORITY_HEADER: Final = "X-Gpufleet-Priority"
#: On a worker's error answers: whose fault it was, ``request`` (a bad body, an item whose
#: ``predict`` raised while the device was otherwise working) or ``worker`` (its own: a
#: device error, every call failing). A router counts only ``worker`` ones (or 5xx
#: without the header) toward passive ejection.
FAULT_HEADER: Final = "X-Gpufleet-Fault"
FAULT_REQUEST: Final = "request"
FAULT_WORKER: Final = "worker"

JSON_CONTENT_TYPE: Final = "application/json"


# /health of a worker -------------------------------------------------------------------

#: ``status`` of a worker's 503 ``/health`` while its device thread is stalled.
HEALTH_STALLED: Final = WorkerState.STALLED


def stall_reason(body: bytes) -> str | None:
    """Why a worker's ``/health`` says it is stalled; None for any other answer."""
    try:
        health = decode(body, HealthBody)
    except WireDecodeError:
        return None
    if health.status != WorkerState.STALLED:
        return None
    return health.reason or "no reason given"


__all__ = [
    "ATTEMPTS_HEADER",
    "DEADLINE_HEADER",
    "FAULT_HEADER",
    "FAULT_REQUEST",
    "FAULT_WORKER",
    "FIRST_BYTE_TIMEOUT_HEADER",
    "HEALTH_STALLED",
    "JSON_CONTENT_TYPE",
    "MAX_JSON_DEPTH",
    "OPENAI_PREFIX",
    "PRIORITY_HEADER",
    "REQUEST_ID_HEADER",
    "ROUTER_SERVER_NAME",
    "SERVER_HEADER",
    "SESSION_HEADER",
    "TIMEOUT_HEADER",
    "UPSTREAM_HEADER",
    "WORKER_SERVER_NAME",
    "AddUpstream",
    "AnyErrorBody",
    "ClassStats",
    "EngineLoad",
    "ErrorBody",
    "ErrorCode",
    "FleetPhase",
    "GpuReading",
    "HealthBody",
    "JSONTooDeep",
    "LatencyMs",
    "MemberOutcome",
    "MemberRole",
    "MemberState",
    "OpenAIError",
    "OpenAIErrorBody",
    "PoolStats",
    "PrefixStats",
    "RecentError",
    "RouteView",
    "RouterState",
    "RouterStats",
    "RouterTotals",
    "TokenStats",
    "UpstreamList",
    "UpstreamState",
    "UpstreamView",
    "WireDecodeError",
    "WorkerCapacity",
    "WorkerState",
    "WorkerStats",
    "decode",
    "decode_json",
    "encode",
    "error_name",
    "error_name_of",
    "error_payload",
    "is_openai_path",
    "is_overloaded_body",
    "openai_error",
    "parse_retry_after",
    "payload_from_exception",
    "retry_after_header",
    "stall_reason",
    "to_builtins",
]
