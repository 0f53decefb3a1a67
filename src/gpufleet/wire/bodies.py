"""Error answers (gpufleet's and OpenAI's) and ``/health`` answers, as typed bodies."""

from __future__ import annotations

import msgspec

from gpufleet.errors import ErrorCode


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``{"error": "WorkerOverloaded", "message": "...", "retry_after_s": 1.0}``.

    ``error`` is an ``ErrorCode`` for gpufleet's own errors; an HTTP reason without
    spaces (``NotFound``) for what the HTTP layer refused; a string either way on the
    wire, so a reader tolerates codes it does not know.
    """

    error: str
    message: str
    retry_after_s: float | None = None
    request_id: str | None = None

    @property
    def code(self) -> ErrorCode | None:
        """``error`` as one of ours, or None for a code this side does not know."""
        try:
            return ErrorCode(self.error)
        except ValueError:
            return None


class OpenAIError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The object under ``error`` in OpenAI's error answers (``retry_after_s`` is ours).

    ``param`` and ``code`` are always there (``null`` when none applies), as OpenAI's are.
    """

    message: str
    type: str
    param: str | None
    code: str | None
    retry_after_s: float | None = None
    request_id: str | None = None


class OpenAIErrorBody(msgspec.Struct):
    """``{"error": {"message", "type", "param", "code"}}``."""

    error: OpenAIError


class AnyErrorBody(msgspec.Struct):
    """Either shape, for a reader that gets both (``/v1/…`` answers are OpenAI's).

    ``error`` is our code (a string) or OpenAI's object; ``name`` reads it either way.
    """

    error: str | OpenAIError
    message: str | None = None

    @property
    def name(self) -> str | None:
        """Our error code, or OpenAI's ``code`` (where we put ours on ``/v1/…``)."""
        return self.error if isinstance(self.error, str) else self.error.code


class HealthBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``GET /health`` of a worker or the router.

    A worker: 200 ``{"status": "ready"}``, else 503 with ``status`` a ``WorkerState``
    (``loading``, ``draining``, ``failed`` with ``message``, ``stalled`` with ``reason``).
    The router: ``status`` a ``RouterState`` (``ready``, ``draining``, ``no ready upstream``).
    A plain string here, as either process may answer.
    """

    status: str
    reason: str | None = None
    message: str | None = None


__all__ = ["AnyErrorBody", "ErrorBody", "HealthBody", "OpenAIError", "OpenAIErrorBody"]
