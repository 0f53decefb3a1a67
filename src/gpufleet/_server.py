"""What the router and the worker share as HTTP servers facing hostile input (issue 13).

- ``refuse_and_close``: a refused body (413, 408) is answered with ``Connection: close``
  and the socket is closed after a short bounded read, never read to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

#: After a refusal, at most this much of what the client already sent is read and
#: dropped, for at most ``LINGER_S``, before the socket closes: enough for the answer to
#: leave before the close (a close with unread bytes resets the connection, and a reset
#: may destroy an answer still in flight), far too little to be worth sending.
LINGER_BYTES: Final = 1 << 20
LINGER_S: Final = 0.5


async def refuse_and_close(
    request: web.Request, response: web.StreamResponse
) -> web.StreamResponse:
    """Send ``response`` with ``Connection: close``, then close the connection.

    The rest of the request body is not read: the answer is followed by a FIN, then up to
    ``LINGER_BYTES`` already on their way are dropped within ``LINGER_S``, then the socket
    closes. aiohttp would otherwise read (and discard) the body for up to 10 s, at the
    client's speed: gigabytes, and a core.
    """
    response.force_close()
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write_eof()
    transport = request.transport
    if transport is not None and not transport.is_closing() and transport.can_write_eof():
        transport.write_eof()
        dropped = 0
        with contextlib.suppress(TimeoutError, ConnectionError, HttpProcessingError):
            async with asyncio.timeout(LINGER_S):
                while dropped < LINGER_BYTES:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    dropped += len(chunk)
    request.protocol.force_close()
    return response


__all__ = ["LINGER_BYTES", "LINGER_S", "refuse_and_close"]
