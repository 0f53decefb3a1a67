"""What the router and the worker share as HTTP servers facing hostile input (issue 13).

- ``refuse_and_close``: a refused body (413, 408) is answered with ``Connection: close``
  and the socket is closed after a short bounded read, never read to its end.
- ``ServerLog``: aiohttp's server logger; a malformed request (what its HTTP parser
  refuses with a 400) is counted and logged as one WARNING line, at most ``burst`` lines
  per ``window_s``; tracebacks only for the server's own bugs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

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


class ServerLog(logging.Logger):
    """The logger handed to aiohttp's server (``web.AppRunner(..., logger=...)``).

    aiohttp logs every request its parser refuses as ``Error handling request`` with a
    traceback at ERROR (1,000 bad requests made 819 KB of log). Here such a request is
    counted (``on_bad``) and told in one WARNING line with its reason and peer, at most
    ``burst`` lines per ``window_s`` (the next line says how many were left out). Anything
    else aiohttp logs (an exception in a handler: our bug) keeps its traceback.
    """

    def __init__(
        self,
        name: str,
        *,
        on_bad: Callable[[], None] | None = None,
        burst: int = 10,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name)
        # Not registered with logging.getLogger: propagate to the process's handlers.
        self.parent = logging.getLogger(name.rpartition(".")[0] or name)
        self._on_bad = on_bad
        self._burst = burst
        self._window_s = window_s
        self._clock = clock
        self._window_start = -float("inf")
        self._in_window = 0
        self._left_out = 0
        #: Malformed requests seen.
        self.bad = 0

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        """Log ``msg``: one rate-limited line for a malformed request, else a traceback."""
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if not isinstance(exc, HttpProcessingError):
            super().exception(msg, *args, exc_info=exc_info, **kw)
            return
        self._bad(exc, args)

    def debug(self, msg: object, *args: object, **kw: Any) -> None:
        """aiohttp's debug line for a first request that is not HTTP: counted, not logged."""
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self.bad += 1
            if self._on_bad is not None:
                self._on_bad()
        super().debug(msg, *args, **kw)

    def _bad(self, exc: HttpProcessingError, args: tuple[object, ...]) -> None:
        self.bad += 1
        if self._on_bad is not None:
            self._on_bad()
        now = self._clock()
        if now - self._window_start >= self._window_s:
            self._window_start = now
            self._in_window = 0
        if self._in_window >= self._burst:
            self._left_out += 1
            return
        self._in_window += 1
        left_out, self._left_out = self._left_out, 0
        peer = args[0] if args else "?"
        # The reason may hold the client's bytes: escaped, and cut short.
        reason = ascii(str(exc.message))[1:-1][:200]
        self.warning(
            "malformed request from %s: %s %s: %s%s",
            peer,
            exc.code,
            type(exc).__name__,
            reason,
            f" ({left_out} more not logged)" if left_out else "",
        )


__all__ = ["LINGER_BYTES", "LINGER_S", "ServerLog", "refuse_and_close"]
