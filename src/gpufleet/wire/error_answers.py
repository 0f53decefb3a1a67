"""Error answers on the wire: our body (``ErrorBody``), OpenAI's shape of it on ``/v1/…``,
reading the code back from either, and the ``Retry-After`` header.
"""

from __future__ import annotations

import math
from typing import Any, Final

from gpufleet.errors import ErrorCode, GpufleetError
from gpufleet.wire.bodies import AnyErrorBody, ErrorBody, OpenAIError, OpenAIErrorBody
from gpufleet.wire.codec import WireDecodeError, decode


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


__all__ = [
    "OPENAI_PREFIX",
    "error_name",
    "error_name_of",
    "error_payload",
    "is_openai_path",
    "is_overloaded_body",
    "openai_error",
    "parse_retry_after",
    "payload_from_exception",
    "retry_after_header",
]
