"""Server-sent events for streaming answers (``/predict`` and ``/v1/chat/completions``).

A stream holds one slot of the worker's ``max_queue`` for its whole life, so a full worker
answers a clean 503 + ``Retry-After`` before any byte. When the caller goes away (aiohttp
cancels the handler) or the deadline passes, the model's generator is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gpufleet import wire
from gpufleet.errors import DeadlineExceeded, GpufleetError
from gpufleet.worker.service import WorkerService

#: The last event of every stream that ended well.
DONE = b"data: [DONE]\n\n"


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def serve_stream(
    request: web.Request,
    service: WorkerService,
    payload: Any,
    deadline: float,
    *,
    render: Callable[[Any], bytes],
    head: bytes = b"",
    tail: Callable[[], bytes] = lambda: DONE,
) -> web.StreamResponse:
    """Answer ``payload``'s stream as events: ``head``, ``render(piece)`` per piece, ``tail()``.

    An error after the first byte cannot change the status any more, so it travels as an
    ``event: error`` with the usual error payload.

    Raises:
        WorkerOverloaded: no queue slot for the stream (nothing was sent yet).
    """
    with service.stream_slot():
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            async with (
                asyncio.timeout(max(0.0, deadline - service.clock())),
                contextlib.aclosing(service.stream(payload)) as pieces,
            ):
                if head:
                    await response.write(head)
                async for piece in pieces:
                    await response.write(render(piece))
        except TimeoutError:
            exc = DeadlineExceeded("deadline passed while streaming")
            await response.write(sse(wire.to_builtins(wire.payload_from_exception(exc)), "error"))
        except GpufleetError as err:
            await response.write(sse(wire.to_builtins(wire.payload_from_exception(err)), "error"))
        else:
            await response.write(tail())
        await response.write_eof()
        return response
