"""What the Batch API keeps: files, batches and one result per request, as plain records.

The field names and status values are OpenAI's (``openai.types.Batch``, ``FileObject``),
so the JSON the API answers is these records with an ``object`` tag.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Final

# Batch statuses, as OpenAI names them.
VALIDATING: Final = "validating"
FAILED: Final = "failed"
IN_PROGRESS: Final = "in_progress"
FINALIZING: Final = "finalizing"
COMPLETED: Final = "completed"
EXPIRED: Final = "expired"
CANCELLING: Final = "cancelling"
CANCELLED: Final = "cancelled"
#: Statuses a batch never leaves.
FINISHED: Final = frozenset({FAILED, COMPLETED, EXPIRED, CANCELLED})
#: Statuses the runner resumes after a restart.
UNFINISHED: Final = frozenset({VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING})

#: File purposes: what users upload, and what batches write.
PURPOSE_BATCH: Final = "batch"
PURPOSE_OUTPUT: Final = "batch_output"


def new_id(prefix: str) -> str:
    """A fresh id such as ``file-3f2a…`` or ``batch_9c1e…`` (96 random bits)."""
    return prefix + secrets.token_hex(12)


@dataclass(slots=True)
class FileRecord:
    """One stored file (an uploaded input or a batch's output)."""

    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    #: Requests (non-blank lines) in the file.
    lines: int = 0
    #: Each request URL the file uses, with the first line that uses it (inputs only;
    #: at most ``jsonl.MAX_URLS`` of them).
    urls: dict[str, int] = field(default_factory=dict)
    expires_at: int | None = None

    def as_openai(self) -> dict[str, Any]:
        """The file object as OpenAI's API shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass(slots=True)
class BatchRecord:
    """One batch and where it stands."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int
    total: int = 0
    completed: int = 0
    failed: int = 0
    metadata: dict[str, str] | None = None
    #: Validation errors (``{"code", "message", "param", "line"}``) of a failed batch.
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None

    @property
    def is_finished(self) -> bool:
        """True once the batch is completed, failed, expired or cancelled."""
        return self.status in FINISHED

    def as_openai(self) -> dict[str, Any]:
        """The batch object as OpenAI's API shows it."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


@dataclass(frozen=True, slots=True)
class ResultRow:
    """The outcome of one request of a batch: its output line, ready to write."""

    custom_id: str
    #: The request's line in the input file (1-based): outputs follow the input's order.
    line: int
    #: True for a 2xx answer (the line goes to the output file, else to the error file).
    ok: bool
    #: The JSON line ``{"id", "custom_id", "response", "error"}`` without its newline.
    doc: bytes
