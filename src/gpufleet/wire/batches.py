"""The Batch API's objects as ``generate --server-side`` reads them (OpenAI's shapes).

Only the fields the client reads; anything else a server sends is ignored, so a newer
router (or OpenAI's own API) still decodes.
"""

from __future__ import annotations

from typing import Any

import msgspec


class FileObject(msgspec.Struct):
    """``POST /v1/files``'s answer: the uploaded file."""

    id: str


class RequestCounts(msgspec.Struct):
    """How many of a batch's requests ended, each way."""

    completed: int = 0
    failed: int = 0


class BatchObject(msgspec.Struct):
    """``POST /v1/batches`` and ``GET /v1/batches/{id}``'s answer."""

    id: str
    status: str
    request_counts: RequestCounts | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


class LineResponse(msgspec.Struct):
    """A result line's upstream answer; ``body`` is JSON, or text that was not JSON."""

    status_code: int | None = None
    body: Any = None


class LineError(msgspec.Struct):
    """A result line's error (no answer from upstream: expired, failed, cancelled)."""

    code: str | None = None
    message: str | None = None


class ResultLine(msgspec.Struct):
    """One line of a batch's output or error file."""

    custom_id: str
    response: LineResponse | None = None
    error: LineError | None = None


__all__ = ["BatchObject", "FileObject", "LineError", "LineResponse", "RequestCounts", "ResultLine"]
