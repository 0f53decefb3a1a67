"""What crosses a process boundary: header names, error payloads, the shape of /stats.

The router and the worker never import each other; this module is their contract, and
the client's. Everything here is plain JSON-able data.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, TypedDict

from gpufleet.errors import ErrorCode, GpufleetError
from gpufleet.wire.states import (
    FleetPhase,
    MemberOutcome,
    MemberRole,
    MemberState,
    RouterState,
    UpstreamState,
    WorkerState,
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

#: ``server`` field of a gpufleet worker's /stats.
WORKER_SERVER_NAME: Final = "gpufleet-worker"


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


# Error payloads ------------------------------------------------------------------------


class ErrorPayload(TypedDict, total=False):
    """``{"error": "WorkerOverloaded", "message": "...", "retry_after_s": 1.0}``."""

    error: str
    message: str
    retry_after_s: float
    request_id: str


def error_payload(error: str, message: str, *, retry_after_s: float | None = None) -> ErrorPayload:
    """Build the JSON body every gpufleet process answers an error with."""
    body: ErrorPayload = {"error": error, "message": message}
    if retry_after_s is not None:
        body["retry_after_s"] = retry_after_s
    return body


def payload_from_exception(exc: GpufleetError) -> ErrorPayload:
    """Turn one of our exceptions into its wire payload."""
    return error_payload(exc.code, exc.message or str(exc), retry_after_s=exc.retry_after_s)


#: Paths answered in OpenAI's shapes (errors included) by workers and the router.
OPENAI_PREFIX: Final = "/v1/"
#: OpenAI's ``code`` and ``param`` for those of our error names that have one of theirs.
_OPENAI_CODES: Final[dict[str, tuple[str, str | None]]] = {
    ErrorCode.MODEL_NOT_FOUND: ("model_not_found", "model"),
}


class OpenAIErrorBody(TypedDict, total=False):
    """The object under ``error`` in OpenAI's error answers (``retry_after_s`` is ours)."""

    message: str
    type: str
    param: str | None
    code: str | None
    retry_after_s: float
    request_id: str


def is_openai_path(path: str) -> bool:
    """True for the OpenAI-shaped routes (``/v1/…``)."""
    return path.startswith(OPENAI_PREFIX)


def openai_error(payload: ErrorPayload, status: int) -> dict[str, OpenAIErrorBody]:
    """Our error payload in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

    ``code`` is OpenAI's where one fits (``model_not_found``), else our error name, so
    ``error_name`` reads it back; ``type`` is ``invalid_request_error`` for a 4xx and
    ``server_error`` for a 5xx.
    """
    name = payload.get("error", "")
    code, param = _OPENAI_CODES.get(name, (name or None, None))
    body: OpenAIErrorBody = {
        "message": payload.get("message", ""),
        "type": "invalid_request_error" if status < 500 else "server_error",
        "param": param,
        "code": code,
    }
    if "retry_after_s" in payload:
        body["retry_after_s"] = payload["retry_after_s"]
    if "request_id" in payload:
        body["request_id"] = payload["request_id"]
    return {"error": body}


def error_name(data: Any) -> str | None:
    """The error name of a decoded error answer, in our shape or OpenAI's (its ``code``)."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("code")
    return error if isinstance(error, str) else None


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
    try:
        data = decode_json(body)
    except ValueError:
        return False
    return error_name(data) in {ErrorCode.WORKER_OVERLOADED, ErrorCode.WORKER_UNAVAILABLE}


# /health of a worker -------------------------------------------------------------------

#: ``status`` of a worker's 503 ``/health`` while its device thread is stalled.
HEALTH_STALLED: Final = "stalled"


class HealthBody(TypedDict, total=False):
    """A worker's ``GET /health``: 200 ``{"status": "ready"}``; 503 with ``status`` one of
    ``loading``, ``draining``, ``failed`` (with ``message``) or ``stalled`` (with ``reason``)."""

    status: str
    reason: str
    message: str


def stall_reason(body: bytes) -> str | None:
    """Why a worker's ``/health`` says it is stalled; None for any other answer."""
    try:
        data = decode_json(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("status") != HEALTH_STALLED:
        return None
    return str(data.get("reason") or "no reason given")


# /stats of a worker --------------------------------------------------------------------


class LatencyMs(TypedDict):
    p50: float
    p99: float


class WorkerStats(TypedDict, total=False):
    """The JSON a worker answers on ``GET /stats`` (fields the router and tools rely on)."""

    server: str  # always WORKER_SERVER_NAME
    model: str
    kind: str
    device: str
    pid: int
    state: str  # "loading" | "ready" | "stalled" | "draining" | "failed"
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
    max_queue: int
    streams: int  # open now, each holding one queue slot
    streams_closed: int  # model generators closed because the caller left
    latency_ms: LatencyMs
    uptime_s: float
    stall_reason: str | None  # why ``state`` is "stalled" (None otherwise)
    stalls: int  # times the worker turned stalled
    stall_timeout_s: float  # 0: the stall detector is off
    gpu: dict[str, Any]  # only on a CUDA device with NVML
    recent_errors: list[dict[str, Any]]


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
    "REQUEST_ID_HEADER",
    "SERVER_HEADER",
    "SESSION_HEADER",
    "TIMEOUT_HEADER",
    "UPSTREAM_HEADER",
    "WORKER_SERVER_NAME",
    "ErrorCode",
    "ErrorPayload",
    "FleetPhase",
    "HealthBody",
    "JSONTooDeep",
    "LatencyMs",
    "MemberOutcome",
    "MemberRole",
    "MemberState",
    "OpenAIErrorBody",
    "RouterState",
    "UpstreamState",
    "WorkerState",
    "WorkerStats",
    "decode_json",
    "error_name",
    "error_payload",
    "is_openai_path",
    "is_overloaded_body",
    "openai_error",
    "parse_retry_after",
    "payload_from_exception",
    "retry_after_header",
    "stall_reason",
]
