"""What crosses a process boundary: header names, typed bodies, states and error codes.

The router and the worker never import each other; this package is their contract, and
the client's. Bodies are ``msgspec.Struct``s (``bodies``: errors and /health; ``stats``:
/stats of a worker and the router; ``admin``: the admin API), states are ``StrEnum``s
(``states``), error codes are ``gpufleet.errors.ErrorCode``. Producers build these types
and ``encode`` them; readers ``decode`` a peer's body once into the type they expect.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from gpufleet.errors import ErrorCode, GpufleetError
from gpufleet.wire.admin import AddUpstream, UpstreamList
from gpufleet.wire.bodies import (
    AnyErrorBody,
    ErrorBody,
    HealthBody,
    OpenAIError,
    OpenAIErrorBody,
)
from gpufleet.wire.codec import WireDecodeError, decode, encode, to_builtins
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


# JSON from another process ------------------------------------------------------------

#: Deepest nesting of arrays and objects accepted in JSON from a socket (serde_json's).
MAX_JSON_DEPTH: Final = 128


class JSONTooDeep(ValueError):
    """JSON nested deeper than ``MAX_JSON_DEPTH`` (arrays and objects)."""


def decode_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` with bounded nesting: what every reader of a peer's JSON uses.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``), not UTF-8 (``UnicodeDecodeError``)
            or nested deeper than ``max_depth`` (``JSONTooDeep``), never RecursionError.
    """
    try:
        data = json.loads(raw)
    except RecursionError:
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels") from None
    # Nesting needs an opening bracket per level: most bodies are shallow by this count,
    # and the walk below is skipped.
    if isinstance(raw, bytes):
        opened = raw.count(b"[") + raw.count(b"{")
    else:
        opened = raw.count("[") + raw.count("{")
    if opened > max_depth and _is_deeper(data, max_depth):
        raise JSONTooDeep(f"JSON nested deeper than {max_depth} levels")
    return data


def _is_deeper(data: Any, max_depth: int) -> bool:
    """True when arrays and objects nest more than ``max_depth`` levels (no recursion)."""
    stack = [(data, 1)] if isinstance(data, list | dict) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, list | dict):
                stack.append((child, depth + 1))
    return False


# Error answers -------------------------------------------------------------------------


def error_payload(
    error: str,
    message: str,
    *,
    retry_after_s: float | None = None,
    request_id: str | None = None,
) -> ErrorBody:
    """The body every gpufleet process answers an error with (``error``: an ErrorCode,
    or an HTTP reason for what the HTTP layer refused)."""
    return ErrorBody(
        error=error, message=message, retry_after_s=retry_after_s, request_id=request_id
    )


def payload_from_exception(exc: GpufleetError, *, request_id: str | None = None) -> ErrorBody:
    """One of our exceptions as its wire body: its ``code``, message and retry hint."""
    return error_payload(
        exc.code,
        exc.message or str(exc),
        retry_after_s=exc.retry_after_s,
        request_id=request_id,
    )


#: Paths answered in OpenAI's shapes (errors included) by workers and the router.
OPENAI_PREFIX: Final = "/v1/"
#: OpenAI's ``code`` and ``param`` for those of our error codes that have one of theirs.
_OPENAI_CODES: Final[dict[str, tuple[str, str | None]]] = {
    ErrorCode.MODEL_NOT_FOUND: ("model_not_found", "model"),
}


def is_openai_path(path: str) -> bool:
    """True for the OpenAI-shaped routes (``/v1/…``)."""
    return path.startswith(OPENAI_PREFIX)


def openai_error(payload: ErrorBody, status: int) -> OpenAIErrorBody:
    """Our error body in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

    ``code`` is OpenAI's where one fits (``model_not_found``), else our error code, so
    ``error_name`` reads it back; ``type`` is ``invalid_request_error`` for a 4xx and
    ``server_error`` for a 5xx.
    """
    code, param = _OPENAI_CODES.get(payload.error, (payload.error or None, None))
    return OpenAIErrorBody(
        OpenAIError(
            message=payload.message,
            type="invalid_request_error" if status < 500 else "server_error",
            param=param,
            code=code,
            retry_after_s=payload.retry_after_s,
            request_id=payload.request_id,
        )
    )


def error_name(data: Any) -> str | None:
    """The error code of an error answer already decoded as plain JSON, ours or OpenAI's.

    Prefer ``error_name_of(body)``, which decodes the body itself, once.
    """
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("code")
    return error if isinstance(error, str) else None


def error_name_of(body: bytes) -> str | None:
    """The error code of an error answer's body, ours or OpenAI's; None for another body."""
    try:
        return decode(body, AnyErrorBody).name
    except WireDecodeError:
        return None


def retry_after_header(seconds: float) -> str:
    """Format a ``Retry-After`` header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))


def parse_retry_after(value: str | None) -> float | None:
    """Read a ``Retry-After`` header given in seconds; HTTP dates are ignored."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


def is_overloaded_body(body: bytes) -> bool:
    """True when a 503 body says the worker's queue was full (the request never ran)."""
    return error_name_of(body) in {ErrorCode.WORKER_OVERLOADED, ErrorCode.WORKER_UNAVAILABLE}


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
