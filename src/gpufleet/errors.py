"""The one exception tree of gpufleet, each class with its wire code and HTTP status.

::

    GpufleetError                                       GpufleetError -> 500
    ├── ConfigError(GpufleetError, ValueError)          ConfigError -> 400
    ├── BadRequest                                      BadRequest -> 400
    │   ├── Unauthorized                                Unauthorized -> 401
    │   ├── NotFound                                    NotFound -> 404
    │   ├── ModelNotFound                               ModelNotFound -> 404
    │   ├── NotServed                                   NotServed -> 404
    │   ├── MethodNotAllowed                            MethodNotAllowed -> 405
    │   ├── RequestTimeout                              RequestTimeout -> 408
    │   ├── PayloadTooLarge                             PayloadTooLarge -> 413
    │   │   └── TooManyInputs                           TooManyInputs -> 413
    │   └── Unprocessable                               Unprocessable -> 422
    ├── WorkerError                                     WorkerError -> 500
    │   ├── ModelError                                  ModelError -> 500
    │   ├── WorkerOverloaded                            WorkerOverloaded -> 503
    │   ├── WorkerUnavailable                           WorkerUnavailable -> 503
    │   └── DeadlineExceeded                            DeadlineExceeded -> 504
    ├── RoutingError                                    RoutingError -> 502
    │   ├── UpstreamError                               UpstreamError -> 502
    │   ├── NoHealthyBackend                            NoHealthyBackend -> 503
    │   ├── AdmissionRejected                           AdmissionRejected -> 503
    │   └── UpstreamTimeout(RoutingError, TimeoutError) UpstreamTimeout -> 504
    ├── FleetError                                      FleetError -> 500
    │   ├── AdminError                                  AdminError -> 502
    │   └── DiscoveryUnavailable                        DiscoveryUnavailable -> 500
    └── ClientError                                     ClientError -> 500
        ├── ClientClosed                                ClientClosed -> 500
        ├── RequestFailed                               RequestFailed -> 500
        └── JobFailed                                   JobFailed -> 500

``BadRequest`` and below: the request as sent cannot be served, whichever process says so
(a worker, the router or its admin API): retrying it unchanged cannot help. ``WorkerError``:
one worker could not serve it. ``RoutingError``: the router could not get an answer.
``FleetError``: ``gpufleet up`` could not manage its children. ``ClientError``: raised in
the caller's process by ``gpufleet.Client``, never sent.

Between processes an error travels as a wire payload (see ``gpufleet.wire``), never as a
pickled exception: its ``error`` is the class's ``code`` (an ``ErrorCode``, spelled as the
class is named), and ``error_class(code)`` gives the class back. ``http_status`` and
``retry_after_s`` say how an error is answered.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    """The ``error`` of a wire error payload: one per class of the tree, named as it is.

    The values are the wire protocol: a class may be renamed, its code may not.
    """

    GPUFLEET_ERROR = "GpufleetError"
    CONFIG_ERROR = "ConfigError"
    BAD_REQUEST = "BadRequest"
    UNAUTHORIZED = "Unauthorized"
    NOT_FOUND = "NotFound"
    MODEL_NOT_FOUND = "ModelNotFound"
    NOT_SERVED = "NotServed"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"
    REQUEST_TIMEOUT = "RequestTimeout"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    TOO_MANY_INPUTS = "TooManyInputs"
    UNPROCESSABLE = "Unprocessable"
    WORKER_ERROR = "WorkerError"
    MODEL_ERROR = "ModelError"
    WORKER_OVERLOADED = "WorkerOverloaded"
    WORKER_UNAVAILABLE = "WorkerUnavailable"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    ROUTING_ERROR = "RoutingError"
    UPSTREAM_ERROR = "UpstreamError"
    NO_HEALTHY_BACKEND = "NoHealthyBackend"
    ADMISSION_REJECTED = "AdmissionRejected"
    UPSTREAM_TIMEOUT = "UpstreamTimeout"
    FLEET_ERROR = "FleetError"
    ADMIN_ERROR = "AdminError"
    DISCOVERY_UNAVAILABLE = "DiscoveryUnavailable"
    CLIENT_ERROR = "ClientError"
    CLIENT_CLOSED = "ClientClosed"
    REQUEST_FAILED = "RequestFailed"
    JOB_FAILED = "JobFailed"


class GpufleetError(Exception):
    """Base of every error gpufleet raises on purpose."""

    code: ClassVar[ErrorCode] = ErrorCode.GPUFLEET_ERROR
    http_status: ClassVar[int] = 500
    retry_after_s: float | None = None

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class ConfigError(GpufleetError, ValueError):
    """A setting is missing, malformed or out of range."""

    code = ErrorCode.CONFIG_ERROR
    http_status = 400


# The request cannot be served as sent ---------------------------------------------------


class BadRequest(GpufleetError):
    """The request cannot be served as sent (its body, its path, its credentials)."""

    code = ErrorCode.BAD_REQUEST
    http_status = 400


class Unauthorized(BadRequest):
    """An admin call without a valid Bearer token."""

    code = ErrorCode.UNAUTHORIZED
    http_status = 401


class NotFound(BadRequest):
    """Nothing is served at this path (or no such upstream, for the admin API)."""

    code = ErrorCode.NOT_FOUND
    http_status = 404


class ModelNotFound(BadRequest):
    """The request's ``model`` names nothing this worker serves (404 ``model_not_found``)."""

    code = ErrorCode.MODEL_NOT_FOUND
    http_status = 404


class NotServed(BadRequest):
    """The route exists, but not for the kind of model this worker serves."""

    code = ErrorCode.NOT_SERVED
    http_status = 404


class MethodNotAllowed(BadRequest):
    """The path exists, not with this method."""

    code = ErrorCode.METHOD_NOT_ALLOWED
    http_status = 405


class RequestTimeout(BadRequest):
    """The client's request body did not arrive within the deadline (the router's 408)."""

    code = ErrorCode.REQUEST_TIMEOUT
    http_status = 408


class PayloadTooLarge(BadRequest):
    """The request body is over the configured size limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE
    http_status = 413


class TooManyInputs(PayloadTooLarge):
    """One request holds more inputs than the queue can ever hold (retrying cannot help)."""

    code = ErrorCode.TOO_MANY_INPUTS


class Unprocessable(BadRequest):
    """Well-formed JSON of the wrong shape: a wrong type, a missing or unknown field."""

    code = ErrorCode.UNPROCESSABLE
    http_status = 422


# One worker could not serve it ----------------------------------------------------------


class WorkerError(GpufleetError):
    """A worker could not serve a request."""

    code = ErrorCode.WORKER_ERROR


class ModelError(WorkerError):
    """The model's predict() raised for the batch holding this item.

    ``request_fault`` is True when the input looks to blame rather than the worker: the
    item failed while its batch-mates (or the calls just before) succeeded.
    """

    code = ErrorCode.MODEL_ERROR
    http_status = 500

    def __init__(self, message: str = "", *, request_fault: bool = False) -> None:
        super().__init__(message)
        self.request_fault = request_fault


class WorkerOverloaded(WorkerError):
    """The worker's queue is full; the request never started and may go elsewhere."""

    code = ErrorCode.WORKER_OVERLOADED
    http_status = 503
    retry_after_s = 1.0


class WorkerUnavailable(WorkerError):
    """The worker is loading, draining, or its device is gone."""

    code = ErrorCode.WORKER_UNAVAILABLE
    http_status = 503
    retry_after_s = 1.0


class DeadlineExceeded(WorkerError):
    """The caller's deadline passed before its answer was ready.

    Not a ``TimeoutError``: code that awaits items under ``asyncio.timeout`` must tell its
    own timeout from an item's deadline already passed in the queue.
    """

    code = ErrorCode.DEADLINE_EXCEEDED
    http_status = 504


# The router could not get an answer -----------------------------------------------------


class RoutingError(GpufleetError):
    """The router could not get an answer from any upstream."""

    code = ErrorCode.ROUTING_ERROR
    http_status = 502


class UpstreamError(RoutingError):
    """The exchange with one upstream failed (not sent, lost, or its answer broke)."""

    code = ErrorCode.UPSTREAM_ERROR


class NoHealthyBackend(RoutingError):
    """No upstream is ready to take the request."""

    code = ErrorCode.NO_HEALTHY_BACKEND
    http_status = 503
    retry_after_s = 1.0


class AdmissionRejected(RoutingError):
    """Every upstream is at its cap and the admission queue is full or timed out."""

    code = ErrorCode.ADMISSION_REJECTED
    http_status = 503
    retry_after_s = 1.0


class UpstreamTimeout(RoutingError, TimeoutError):
    """The request's deadline passed before an upstream answered."""

    code = ErrorCode.UPSTREAM_TIMEOUT
    http_status = 504


# gpufleet up could not manage its children ----------------------------------------------


class FleetError(GpufleetError):
    """``gpufleet up`` could not start, watch or tell the router about a child."""

    code = ErrorCode.FLEET_ERROR


class AdminError(FleetError):
    """The router's admin API did not answer as expected."""

    code = ErrorCode.ADMIN_ERROR
    http_status = 502


class DiscoveryUnavailable(FleetError):
    """This GPU discovery method cannot run here (no library, no executable)."""

    code = ErrorCode.DISCOVERY_UNAVAILABLE


# Raised in the caller's process by gpufleet.Client --------------------------------------


class ClientError(GpufleetError):
    """Base of the errors raised by ``gpufleet.Client``."""

    code = ErrorCode.CLIENT_ERROR


class ClientClosed(ClientError):
    """The client was used after ``aclose()``."""

    code = ErrorCode.CLIENT_CLOSED


class RequestFailed(ClientError):
    """One HTTP call failed; ``status`` is None for connection errors."""

    code = ErrorCode.REQUEST_FAILED

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

    code = ErrorCode.JOB_FAILED


def _tree(root: type[GpufleetError]) -> list[type[GpufleetError]]:
    """``root`` and every class below it that is defined in this module."""
    out: list[type[GpufleetError]] = []
    stack = [root]
    while stack:
        cls = stack.pop()
        if cls.__module__ == __name__:
            out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


#: ``ErrorCode`` -> its class (the reverse of ``cls.code``).
_BY_CODE: dict[ErrorCode, type[GpufleetError]] = {cls.code: cls for cls in _tree(GpufleetError)}


def error_class(code: ErrorCode | str) -> type[GpufleetError] | None:
    """The class whose ``code`` is ``code`` (a wire payload's ``error``); None if unknown."""
    try:
        return _BY_CODE[ErrorCode(code)]
    except ValueError:
        return None


__all__ = [
    "AdminError",
    "AdmissionRejected",
    "BadRequest",
    "ClientClosed",
    "ClientError",
    "ConfigError",
    "DeadlineExceeded",
    "DiscoveryUnavailable",
    "ErrorCode",
    "FleetError",
    "GpufleetError",
    "JobFailed",
    "MethodNotAllowed",
    "ModelError",
    "ModelNotFound",
    "NoHealthyBackend",
    "NotFound",
    "NotServed",
    "PayloadTooLarge",
    "RequestFailed",
    "RequestTimeout",
    "RoutingError",
    "TooManyInputs",
    "Unauthorized",
    "Unprocessable",
    "UpstreamError",
    "UpstreamTimeout",
    "WorkerError",
    "WorkerOverloaded",
    "WorkerUnavailable",
    "error_class",
]
