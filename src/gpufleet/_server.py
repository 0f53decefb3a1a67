"""What the router and the worker share as HTTP servers facing hostile input (issue 13).

- ``refuse_and_close``: a refused body (413, 408) is answered with ``Connection: close``
  and the socket is closed after a short bounded read, never read to its end.
- ``ServerLog``: aiohttp's server logger; a malformed request (what its HTTP parser
  refuses with a 400) is counted and logged as one WARNING line, at most ``burst`` lines
  per ``window_s``; tracebacks only for the server's own bugs.
- ``HostGuard``: a middleware against DNS rebinding and cross-site browser requests:
  bound to loopback, only loopback ``Host`` names (and ``--allowed-host`` ones) are
  served; a state-changing request from a browser page of another origin is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
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


#: Methods a browser page may send cross-site with no harm done (reading is what CORS
#: guards, and these change nothing).
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: ``Host`` values whose answer ``HostGuard`` keeps.
_HOSTS_KEPT: Final = 256


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``*.localhost`` (RFC 6761), 127.0.0.0/8 and ::1."""
    name = host.lower().rstrip(".").strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(authority: str) -> str:
    """The host of a ``Host`` value (or an origin's authority): lower case, no port."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0].rstrip(".") if ":" in authority else authority.rstrip(".")


class HostGuard:
    """Which ``Host`` names a server answers, and which browser origins may change things.

    Bound to loopback (the default), a request must name a loopback host (``127.0.0.1``,
    ``localhost``, ``[::1]``, any port) or one of ``allowed``: a page on a name that its
    DNS turned to 127.0.0.1 (DNS rebinding) gets 421. Bound elsewhere, ``allowed`` applies
    as given (empty: any name; ``*`` always: any). ``*.example.com`` allows subdomains.

    A request that may change something (not GET/HEAD/OPTIONS) with an ``Origin`` is
    served only when that origin is the request's own host, or an allowed name, or
    loopback for a loopback server; one with no ``Origin`` but ``Sec-Fetch-Site:
    cross-site`` is refused too: 403 (a page's form or ``fetch`` runs requests without
    CORS preflight). Clients that are not browsers send neither and are not affected.
    """

    def __init__(self, bind_host: str, allowed: Sequence[str] = ()) -> None:
        self.loopback_only = is_loopback(bind_host)
        names = [a.strip().lower().rstrip(".") for a in allowed if a.strip()]
        self.any_host = "*" in names or (not self.loopback_only and not names)
        self.names = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        #: ``Host`` values seen and whether they are served (most requests repeat one).
        self._hosts: dict[str, bool] = {}

    def is_allowed(self, name: str) -> bool:
        """True when requests naming host ``name`` (from ``host_name``) are served."""
        if self.any_host or name in self.names or is_loopback(name):
            return True
        return bool(self.suffixes) and name.endswith(self.suffixes)

    def _is_served(self, host: str) -> bool:
        served = self._hosts.get(host)
        if served is None:
            if len(self._hosts) >= _HOSTS_KEPT:
                self._hosts.clear()  # a flood of made-up names: start over
            served = self._hosts[host] = self.is_allowed(host_name(host))
        return served

    def is_allowed_origin(self, origin: str, host: str | None) -> bool:
        """True when a page of ``origin`` may change things on a server reached as ``host``."""
        scheme, sep, rest = origin.strip().partition("://")
        if not sep or not rest or scheme.lower() not in ("http", "https"):
            return False  # "null" (sandboxed, file://) or not a web origin
        authority = rest.split("/", 1)[0].lower()
        if host is not None and authority == host.strip().lower():
            return True  # same origin
        name = host_name(authority)
        if name in self.names or (self.suffixes and name.endswith(self.suffixes)):
            return True
        return self.loopback_only and is_loopback(name)

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Refuse a request for a host not served (421) or from a foreign page (403)."""
        headers = request.headers
        host = headers.get("Host")
        if host is not None and not self.any_host and not self._is_served(host):
            return await _refuse(
                request,
                421,
                "MisdirectedRequest",
                f"host {ascii(host)[1:-1][:100]} is not served here (see --allowed-host)",
            )
        if request.method not in _SAFE_METHODS:
            origin = headers.get("Origin")
            if origin is not None:
                if not self.is_allowed_origin(origin, host):
                    return await _refuse(
                        request,
                        403,
                        "CrossOriginRefused",
                        f"requests from pages of {ascii(origin)[1:-1][:100]} are refused",
                    )
            elif headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
                return await _refuse(
                    request, 403, "CrossOriginRefused", "cross-site browser requests are refused"
                )
        return await handler(request)


async def _refuse(
    request: web.Request, status: int, error: str, message: str
) -> web.StreamResponse:
    response = web.json_response({"error": error, "message": message}, status=status)
    if request.content.is_eof():
        return response
    return await refuse_and_close(request, response)  # its body is not read


__all__ = [
    "LINGER_BYTES",
    "LINGER_S",
    "HostGuard",
    "ServerLog",
    "host_name",
    "is_loopback",
    "refuse_and_close",
]
