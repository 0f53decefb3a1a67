"""Pass an upstream's answer on to the client as it arrives, and end one that broke.

Once the first byte reached the client nothing is retried: an answer that breaks then is
cut so that the client can tell (an event stream gets a last ``event: error``; any other
body ends with the connection, never as if complete).
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Callable
from typing import Final

from aiohttp import web
from multidict import istr

from gpufleet.errors import ErrorCode
from gpufleet.router.http1 import Response
from gpufleet.router.tokens import TokenCounts
from gpufleet.router.watch import AttemptWatch, ClientStalled, DeadlinePassed

_CT: Final = istr("Content-Type")
#: Bytes of an LLM stream's end kept to find its ``usage``.
_TAIL: Final = 4096


async def relay(
    resp: Response,
    stream: web.StreamResponse,
    watch: AttemptWatch,
    tokens: Callable[[], TokenCounts] | None,
    started: float,
    clock: Callable[[], float],
) -> None:
    """Write ``resp``'s body to the prepared ``stream`` chunk by chunk, then end it.

    ``tokens``: the counters an LLM answer's usage and timings go to, got once the
    stream ended (``None``: not counted).
    ``watch`` sees every write begin and end (it drops a client that reads nothing).

    Raises:
        Stop, AnswerBroken, Lost: the answer broke off (see ``end_broken``).
        ConnectionError: the client went away.
    """
    events = 0
    # The fewest last chunks that hold ``_TAIL`` bytes, joined once at the end: not a
    # copy of the stream's end per chunk.
    tail: deque[bytes] = deque()
    tail_len = 0
    first_at: float | None = None
    async for chunk in resp.iter_chunks():
        if tokens is not None:
            if first_at is None:
                first_at = clock()
            events += chunk.count(b"data:")
            tail.append(chunk)
            tail_len += len(chunk)
            while tail_len - len(tail[0]) >= _TAIL:
                tail_len -= len(tail.popleft())
        watch.writes += 1
        watch.writing = True
        await stream.write(chunk)
        watch.writing = False
    await stream.write_eof()
    if tokens is not None:
        end = clock()
        tokens().add_stream(
            b"".join(tail)[-_TAIL:],
            events,
            None if first_at is None else first_at - started,
            0.0 if first_at is None else end - first_at,
        )


async def end_broken(
    request: web.Request, stream: web.StreamResponse, upstream_id: str, exc: Exception
) -> None:
    """End an answer that broke after bytes reached the client, so the client can tell.

    An event stream gets a last ``event: error``; any other body is cut short (the
    connection closed before its end), never ended as if complete.
    """
    transport = request.transport
    if isinstance(exc, ClientStalled) or transport is None or transport.is_closing():
        return
    if stream.headers.get(_CT, "").startswith("text/event-stream"):
        event = json.dumps(
            {
                "error": {
                    "message": f"the answer from upstream {upstream_id} broke: {exc}",
                    "type": "upstream_error",
                    "code": _broken_code(exc),
                }
            }
        )
        with contextlib.suppress(ConnectionError):
            await stream.write(f"event: error\ndata: {event}\n\n".encode())
            await stream.write_eof()
            return
    transport.abort()


def _broken_code(exc: Exception) -> ErrorCode:
    """The code of an answer cut after it began: the deadline, or the upstream's fault."""
    return (
        ErrorCode.UPSTREAM_TIMEOUT if isinstance(exc, DeadlinePassed) else ErrorCode.UPSTREAM_ERROR
    )
