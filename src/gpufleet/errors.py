"""The one exception tree of gpufleet.

::

    GpufleetError
    ├── ConfigError(GpufleetError, ValueError)       bad settings, caught at the edge
    ├── WorkerError
    │   ├── WorkerOverloaded    queue full -> 503 + Retry-After (safe to retry elsewhere)
    │   ├── WorkerUnavailable   starting, draining or gone -> 503
    │   ├── ModelError          predict() raised -> 500 for that batch's items
    │   └── BadRequest          the input cannot be decoded -> 400
    │       ├── Unprocessable   well-formed JSON of the wrong shape -> 422
    │       ├── ModelNotFound   a "model" the worker does not serve -> 404 model_not_found
    │       └── PayloadTooLarge the body is over the limit -> 413
    ├── RoutingError
    │   ├── NoHealthyBackend    nothing can take the request -> 503 + Retry-After
    │   ├── AdmissionRejected   the router's admission queue is full -> 503 + Retry-After
    │   └── UpstreamTimeout(RoutingError, TimeoutError)
    └── ClientError
        ├── ClientClosed        used after aclose(): our caller's bug
        ├── RequestFailed       one HTTP call failed (status, retryable)
        └── JobFailed           an item of a bulk job failed for good

Between processes an error travels as a wire payload (see ``gpufleet.wire``), never as a
pickled exception. ``http_status`` and ``retry_after_s`` say how an error is answered.
"""

from __future__ import annotations


class GpufleetError(Exception):
    """Base of every error gpufleet raises on purpose."""

    http_status: int = 500
    retry_after_s: float | None = None

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class ConfigError(GpufleetError, ValueError):
    """A setting is missing, malformed or out of range."""

    http_status = 400


class WorkerError(GpufleetError):
    """A worker could not serve a request."""


class WorkerOverloaded(WorkerError):
    """The worker's queue is full; the request never started and may go elsewhere."""

    http_status = 503
    retry_after_s = 1.0


class WorkerUnavailable(WorkerError):
    """The worker is loading, draining, or its device is gone."""

    http_status = 503
    retry_after_s = 1.0


class ModelError(WorkerError):
    """The model's predict() raised for the batch holding this item.

    ``request_fault`` is True when the input looks to blame rather than the worker: the
    item failed while its batch-mates (or the calls just before) succeeded.
    """

    http_status = 500

    def __init__(self, message: str = "", *, request_fault: bool = False) -> None:
        super().__init__(message)
        self.request_fault = request_fault


class BadRequest(WorkerError):
    """The request body cannot be turned into model input."""

    http_status = 400


class Unprocessable(BadRequest):
    """Well-formed JSON of the wrong shape: a wrong type, a missing or unknown field (422)."""

    http_status = 422


class ModelNotFound(BadRequest):
    """The request's ``model`` names nothing this worker serves (404 ``model_not_found``)."""

    http_status = 404


class PayloadTooLarge(BadRequest):
    """The request body is over the configured size limit."""

    http_status = 413


class RoutingError(GpufleetError):
    """The router could not get an answer from any upstream."""

    http_status = 502


class NoHealthyBackend(RoutingError):
    """No upstream is ready to take the request."""

    http_status = 503
    retry_after_s = 1.0


class AdmissionRejected(RoutingError):
    """Every upstream is at its cap and the admission queue is full or timed out."""

    http_status = 503
    retry_after_s = 1.0


class UpstreamTimeout(RoutingError, TimeoutError):
    """The request's deadline passed before an upstream answered."""

    http_status = 504


class ClientError(GpufleetError):
    """Base of the errors raised by ``gpufleet.Client``."""


class ClientClosed(ClientError):
    """The client was used after ``aclose()``."""


class RequestFailed(ClientError):
    """One HTTP call failed; ``status`` is None for connection errors."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status
        self.retryable = retryable


class JobFailed(ClientError):
    """An item of a bulk job failed after all its attempts."""


__all__ = [
    "AdmissionRejected",
    "BadRequest",
    "ClientClosed",
    "ClientError",
    "ConfigError",
    "GpufleetError",
    "JobFailed",
    "ModelError",
    "ModelNotFound",
    "NoHealthyBackend",
    "PayloadTooLarge",
    "RequestFailed",
    "RoutingError",
    "Unprocessable",
    "UpstreamTimeout",
    "WorkerError",
    "WorkerOverloaded",
    "WorkerUnavailable",
]
