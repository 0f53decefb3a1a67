"""``POST /predict``: the model's own route, batched, streamed, or raw bytes on request."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from gpufleet import wire
from gpufleet.errors import GpufleetError
from gpufleet.worker import codec
from gpufleet.worker.app import (
    SERVICE,
    deadline_of,
    decode_items,
    encode_outputs,
    json_response,
    read_json,
)
from gpufleet.worker.service import DeadlineExceeded, WorkerService

log = logging.getLogger("gpufleet.worker")


def accepts(request: web.Request, content_type: str) -> bool:
    """True when ``Accept`` names ``content_type`` (or ``type/*``); ``*/*`` alone is not enough.

    curl and most clients send ``*/*``; they get JSON, which is what they expect.
    """
    major = content_type.split("/", 1)[0]
    for part in request.headers.get("Accept", "").split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media == content_type or media == f"{major}/*":
            return True
    return False


async def handle(request: web.Request) -> web.StreamResponse:
    """``{"input": x}`` → ``{"output": y}``; ``{"inputs": [...]}`` → ``{"outputs": [...]}``."""
    service = request.app[SERVICE]
    service.check_ready()
    with service.request():
        deadline = deadline_of(request)
        body = await read_json(request)
        info = service.info
        custom = bool(info and info.custom_decode)
        req = codec.parse_predict(body, allow_unknown=custom)
        payloads = decode_items(service, req.items, custom=custom)
        if req.stream:
            return await _stream(request, service, payloads[0], deadline)
        outputs = encode_outputs(service, await service.submit(payloads, deadline))
        content_type = info.binary_content_type if info else "application/octet-stream"
        first = outputs[0]
        if req.single and isinstance(first, (bytes, bytearray)) and accepts(request, content_type):
            return web.Response(body=bytes(first), content_type=content_type)
        return json_response(
            codec.predict_answer(outputs, single=req.single, content_type=content_type)
        )


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(
    request: web.Request, service: WorkerService, payload: Any, deadline: float
) -> web.StreamResponse:
    """Server-sent events: one ``data:`` per piece of ``predict_stream``, then ``[DONE]``.

    An error after the first byte cannot change the status any more, so it travels as an
    ``event: error`` with the usual error payload.
    """
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        async with asyncio.timeout(max(0.0, deadline - service.clock())):
            async for piece in service.stream(payload):
                out = encode_outputs(service, [piece])[0]
                value, is_bytes = codec.encode_output(out, "application/octet-stream")
                await response.write(
                    _sse(
                        {"output": value}
                        if not is_bytes
                        else {"output": value, "output_encoding": "base64"}
                    )
                )
    except TimeoutError:
        exc = DeadlineExceeded("deadline passed while streaming")
        await response.write(_sse(wire.error_payload("DeadlineExceeded", str(exc)), "error"))
    except GpufleetError as err:
        await response.write(_sse(wire.payload_from_exception(err), "error"))
    else:
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
