"""``POST /predict``: the model's own route, batched, streamed, or raw bytes on request."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gpufleet.worker import codec
from gpufleet.worker.app import SERVICE, deadline_of, decode_items, json_response, read_json
from gpufleet.worker.streaming import serve_stream, sse

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
            return await serve_stream(request, service, payloads[0], deadline, render=_render_piece)
        outputs = await service.submit(payloads, deadline)
        content_type = info.binary_content_type if info else "application/octet-stream"
        first = outputs[0]
        if req.single and isinstance(first, (bytes, bytearray)) and accepts(request, content_type):
            return web.Response(body=bytes(first), content_type=content_type)
        return json_response(
            codec.predict_answer(outputs, single=req.single, content_type=content_type)
        )


def _render_piece(piece: Any) -> bytes:
    value, is_bytes = codec.encode_output(piece, "application/octet-stream")
    return sse({"output": value, "output_encoding": "base64"} if is_bytes else {"output": value})
