"""The worker's HTTP endpoints (aiohttp): thin handlers over ``WorkerService``.

``/health``, ``/stats`` and ``/metrics`` only read counters, so they answer at once even
while the device thread is busy: the event loop never runs model code. The same reading
tells when that thread is stalled (``worker/stall.py``): ``/health`` then answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gpufleet import wire
from gpufleet._server import HostGuard, refuse_and_close
from gpufleet.errors import (
    BadRequest,
    GpufleetError,
    ModelError,
    PayloadTooLarge,
    Unprocessable,
)
from gpufleet.worker import codec
from gpufleet.worker.service import REQUEST_PRIORITY, WorkerService
from gpufleet.worker.stats import GpuSampler, nvml_opener

log = logging.getLogger("gpufleet.worker")

SERVICE: web.AppKey[WorkerService] = web.AppKey("service", WorkerService)
GPU: web.AppKey[GpuSampler] = web.AppKey("gpu", GpuSampler)
#: Key on a response naming the error it answers (for the error counters).
ERROR_KEY = "gpufleet_error"
#: Key on a response holding its error message (for /stats ``recent_errors``).
ERROR_MESSAGE_KEY = "gpufleet_error_message"
#: Routes whose answers count as served/errors in /stats.
_INFERENCE_PREFIXES = ("/predict", "/v1/")
#: Routes with their own label on the request counter.
_ROUTES = frozenset(
    {"/predict", "/v1/embeddings", "/v1/images/generations", "/v1/chat/completions"}
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer: a wire type or plain data (compact: embeddings are long float lists).

    Plain data (a model's outputs) goes through ``json`` as it always did: a NaN stays
    ``NaN``, as Python clients read it, where msgspec would write ``null``.
    """
    if isinstance(data, msgspec.Struct):
        body = wire.encode(data)
    else:
        body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(
        body=body,
        status=status,
        content_type=wire.JSON_CONTENT_TYPE,
        headers=headers,
    )


def error_response(exc: GpufleetError, status: int | None = None) -> web.Response:
    """The wire error payload of ``exc``, with ``Retry-After`` when it has one and
    ``X-Gpufleet-Fault`` saying whether the request or the worker is to blame."""
    status = status or exc.http_status
    request_fault = status < 500 or (isinstance(exc, ModelError) and exc.request_fault)
    headers = {wire.FAULT_HEADER: wire.FAULT_REQUEST if request_fault else wire.FAULT_WORKER}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = wire.retry_after_header(exc.retry_after_s)
    response = json_response(wire.payload_from_exception(exc), status=status, headers=headers)
    response[ERROR_KEY] = exc.code
    response[ERROR_MESSAGE_KEY] = exc.message or str(exc)
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer our exceptions as JSON, and count every inference request in /stats."""
    service = request.app[SERVICE]
    started = time.monotonic()
    counted = request.path.startswith(_INFERENCE_PREFIXES) and request.path != "/v1/models"
    # Batch-class work (a router's Batch API) gives way to interactive items in the queue.
    REQUEST_PRIORITY.set(int(request.headers.get(wire.PRIORITY_HEADER) == "batch"))
    try:
        response = await handler(request)
    except GpufleetError as exc:  # DeadlineExceeded (504) included
        response = error_response(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        response = error_response(PayloadTooLarge(exc.text or "request body too large"))
    except web.HTTPException as exc:
        name = exc.reason.replace(" ", "")
        fault = wire.FAULT_REQUEST if exc.status < 500 else wire.FAULT_WORKER
        response = json_response(
            wire.error_payload(name, exc.text or exc.reason),
            exc.status,
            headers={wire.FAULT_HEADER: fault},
        )
        response[ERROR_MESSAGE_KEY] = exc.text or exc.reason
    if counted:
        _count(service, request.path, response, time.monotonic() - started)
    if wire.is_openai_path(request.path) and ERROR_MESSAGE_KEY in response:
        _as_openai(response)
    if response.status >= 400 and not request.content.is_eof():
        # Refused before its body ended (over the limit, broken framing): the rest is not
        # read (issue 13).
        return await refuse_and_close(request, response)
    return response


def _as_openai(response: web.StreamResponse) -> None:
    """Re-shape our error answer as OpenAI's (``/v1/…`` routes), keeping its headers."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return
    try:
        payload = wire.decode(response.body, wire.ErrorBody)
    except wire.WireDecodeError:
        return
    response.body = wire.encode(wire.openai_error(payload, response.status))


def _count(service: WorkerService, path: str, response: web.StreamResponse, took: float) -> None:
    status = response.status
    route = path if path in _ROUTES else "other"
    service.metrics.requests.labels(route=route, status=str(status)).inc()
    c = service.counters
    if status < 400:
        c.served += 1
        c.record_latency(took)
        service.metrics.request_time.observe(took)
        return
    error = str(response.get(ERROR_KEY, status))
    if status == 503 and error == wire.ErrorCode.WORKER_OVERLOADED:
        c.rejected += 1
    else:
        c.errors += 1
        message = str(response.get(ERROR_MESSAGE_KEY, ""))
        c.record_error(error, message, status=status, path=path, at=time.time())
    service.metrics.errors.labels(error=error).inc()


async def _mark(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[wire.SERVER_HEADER] = "1"


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, refusing an oversized one before reading it.

    Raises:
        PayloadTooLarge: ``Content-Length`` (or the bytes read so far) is over the limit.
        BadRequest: the body is not JSON.
    """
    limit = request.app[SERVICE].cfg.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"the body is {request.content_length} bytes; the limit is {limit} (--max-body-mb)"
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the body is over the limit of {limit} bytes (--max-body-mb)"
        ) from None
    except HttpProcessingError as exc:
        raise BadRequest(f"malformed request body: {exc.message}") from None
    return codec.parse_json(raw)


def deadline_of(request: web.Request) -> float:
    """The monotonic deadline from ``X-Request-Timeout``/``X-Request-Deadline`` or the default."""
    service = request.app[SERVICE]
    return codec.deadline_from_headers(
        request.headers.get(wire.TIMEOUT_HEADER),
        request.headers.get(wire.DEADLINE_HEADER),
        now=service.clock(),
        default_s=service.cfg.request_timeout_s,
    )


def decode_items(service: WorkerService, items: list[dict[str, Any]], *, custom: bool) -> list[Any]:
    """Run the model's ``decode`` on each per-item body; its errors become 400s.

    ``decode`` runs here, on the event loop (it checks the body and maps errors to 4xx);
    ``encode`` runs on the device thread right after ``predict`` (see ``runner.py``).
    """
    model = service.runner.model
    if model is None or not custom:
        return [item["input"] for item in items]
    try:
        return [model.decode(item) for item in items]
    except BadRequest:
        raise
    except Exception as exc:
        raise Unprocessable(f"the model could not decode the input: {exc}") from exc


async def health(request: web.Request) -> web.Response:
    """200 when loaded, not draining and not stalled, else 503 (with the state)."""
    service = request.app[SERVICE]
    body: wire.HealthBody
    stall = service.check_stall()
    if stall is not None:
        body = wire.HealthBody(status=wire.WorkerState.STALLED, reason=stall.reason)
    elif service.is_ready:
        return json_response(wire.HealthBody(status=wire.WorkerState.READY))
    else:
        error = service.load_error
        body = wire.HealthBody(status=service.state, message=None if error is None else str(error))
    return json_response(body, status=503, headers={"Retry-After": "1"})


async def stats(request: web.Request) -> web.Response:
    """``wire.WorkerStats`` (with ``gpu`` when NVML reads the device)."""
    service = request.app[SERVICE]
    return json_response(service.stats(gpu=request.app[GPU].latest))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition text."""
    service = request.app[SERVICE]
    if service.batcher is not None:
        service.metrics.queue_depth.set(service.batcher.depth)
    service.check_stall()  # sets gpufleet_worker_stalled
    service.metrics.set_gpu(request.app[GPU].latest)
    return web.Response(
        body=service.metrics.render(), headers={"Content-Type": service.metrics.content_type}
    )


async def _sample_gpu(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[GPU].run(), name="gpu-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_app(service: WorkerService) -> web.Application:
    """The aiohttp application of one worker."""
    from gpufleet.worker import chat, openai_routes, predict

    guard = HostGuard(service.cfg.host, service.cfg.allowed_hosts)
    app = web.Application(
        middlewares=[guard.middleware, errors_middleware],
        client_max_size=service.cfg.max_body_bytes,
    )
    app[SERVICE] = service
    # The process's own mask says which physical GPU its cuda:N is (NVML ignores the mask).
    app[GPU] = GpuSampler(
        lambda: service.info.device if service.info else None,
        nvml_opener(os.environ.get("CUDA_VISIBLE_DEVICES")),
    )
    app.cleanup_ctx.append(_sample_gpu)
    app.on_response_prepare.append(_mark)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/predict", predict.handle)
    app.router.add_get("/v1/models", openai_routes.models)
    app.router.add_post("/v1/embeddings", openai_routes.embeddings)
    app.router.add_post("/v1/images/generations", openai_routes.images)
    app.router.add_post("/v1/chat/completions", chat.completions)
    return app


__all__ = ["SERVICE", "build_app", "error_response", "json_response"]
