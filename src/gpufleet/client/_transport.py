"""The client's HTTP seam: aiohttp on the outside, ``gpufleet.errors`` on the inside.

``HttpTransport`` keeps one ``aiohttp.ClientSession`` (connections are reused across
items) and turns every aiohttp or socket exception into ``RequestFailed``, so nothing
above this module sees a third-party type. ``MemoryTransport`` answers from Python
handlers instead of sockets, for tests of the dispatch logic.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from gpufleet import wire
from gpufleet.errors import RequestFailed

#: 4xx answers that mean "not now" rather than "never": retried like a 5xx.
RETRYABLE_4XX = frozenset({408, 425, 429})
#: 503 error names that mean "nothing can serve you" (down) rather than "full" (busy).
_DOWN_ERRORS = frozenset({wire.ErrorCode.NO_HEALTHY_BACKEND, wire.ErrorCode.WORKER_UNAVAILABLE})


class ServerBusy(RequestFailed):
    """The server is up but full (429, or 503 with ``Retry-After``): come back later."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer, fully read."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        """The media type without parameters (``application/json``)."""
        for key, value in self.headers.items():
            if key.lower() == "content-type":
                return value.split(";", 1)[0].strip().lower()
        return ""

    def header(self, name: str) -> str | None:
        """A header's value, looked up case-insensitively."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


class Transport(Protocol):
    """Sends one request and reads the whole answer; connection trouble is ``RequestFailed``."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        budget_s: float,
    ) -> Reply: ...

    async def aclose(self) -> None: ...


class HttpTransport:
    """aiohttp with one session and connection reuse; errors become ``RequestFailed``."""

    def __init__(self, *, connect_timeout: float = 10.0) -> None:
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # limit=0: the dispatcher bounds in-flight requests per endpoint itself.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        budget_s: float,
    ) -> Reply:
        """Send and read one request within ``budget_s`` seconds."""
        session = self._get_session()
        budget = aiohttp.ClientTimeout(total=budget_s, sock_connect=self._connect_timeout)
        try:
            async with session.request(
                method, url, json=json_body, headers=dict(headers or {}), timeout=budget
            ) as resp:
                body = await resp.read()
                return Reply(resp.status, body, dict(resp.headers))
        except aiohttp.ConnectionTimeoutError as exc:
            raise RequestFailed(
                f"{method} {url}: no connection within {self._connect_timeout:g}s",
                retryable=True,
            ) from exc
        except TimeoutError as exc:
            raise RequestFailed(
                f"{method} {url}: no answer within {budget_s:g}s", retryable=True
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RequestFailed(f"{method} {url}: {_describe(exc)}", retryable=True) from exc

    async def aclose(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _describe(exc: BaseException) -> str:
    """What went wrong, in plain words (not aiohttp's ``ssl:default [Connect call …]``)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "cannot resolve the host name"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_error(exc.os_error, "cannot connect")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut short"
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a valid URL"
    if isinstance(exc, OSError):
        return _os_error(exc, "connection error")
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _os_error(exc: OSError, default: str) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused (nothing listens there)"
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return default


Handler = Callable[[str, str, Any], Awaitable[Reply]]


class MemoryTransport:
    """Answers from ``handlers[base_url](method, path, body)``; an unknown URL is refused."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = dict(handlers)
        self.calls: list[tuple[str, str]] = []
        self.closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        budget_s: float,
    ) -> Reply:
        """Call the handler of ``url``'s base, within ``budget_s``."""
        self.calls.append((method, url))
        for base, handler in self.handlers.items():
            if url.startswith(base):
                try:
                    async with asyncio.timeout(budget_s):
                        return await handler(method, url[len(base) :], json_body)
                except TimeoutError as exc:
                    raise RequestFailed(f"{method} {url}: timed out", retryable=True) from exc
        raise RequestFailed(f"{method} {url}: connection refused", retryable=True)

    async def aclose(self) -> None:
        """Mark the transport closed."""
        self.closed = True


def json_reply(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Reply:
    """A JSON ``Reply`` (for ``MemoryTransport`` handlers)."""
    hdrs = {"Content-Type": wire.JSON_CONTENT_TYPE, **(headers or {})}
    return Reply(status, json.dumps(data).encode(), hdrs)


def check(reply: Reply, what: str) -> Reply:
    """Return ``reply`` when it is a 2xx, else raise ``RequestFailed`` saying why.

    5xx, 408, 425 and 429 are retryable; other 4xx are final. ``Retry-After`` (header, or
    ``retry_after_s`` of a gpufleet error payload) travels as ``retry_after_s``. A full
    server (429, or 503 with ``Retry-After`` unless it says nothing can serve) raises
    ``ServerBusy``; a router with no healthy worker is down, not busy.
    """
    if 200 <= reply.status < 300:
        return reply
    reason, retry_after, error = _error_details(reply)
    header_wait = wire.parse_retry_after(reply.header("Retry-After"))
    retry_after = header_wait if header_wait is not None else retry_after
    retryable = reply.status >= 500 or reply.status in RETRYABLE_4XX
    busy = reply.status == 429 or (
        reply.status == 503 and retry_after is not None and error not in _DOWN_ERRORS
    )
    raise (ServerBusy if busy else RequestFailed)(
        f"{what}: HTTP {reply.status}: {reason}",
        status=reply.status,
        retryable=retryable,
        retry_after_s=retry_after,
    )


def _error_details(reply: Reply) -> tuple[str, float | None, str | None]:
    try:
        data = json.loads(reply.body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        error, message = data.get("error"), data.get("message") or data.get("detail")
        if isinstance(error, dict):  # OpenAI-shaped: {"error": {"message", "code", …}}
            message, error = error.get("message"), wire.error_name(data) or error.get("type")
        retry = data.get("retry_after_s")
        wait = float(retry) if isinstance(retry, (int, float)) and retry >= 0 else None
        parts = [str(p) for p in (error, message) if p]
        if parts:
            return ": ".join(parts), wait, str(error) if error else None
    text = reply.body.decode("utf-8", errors="replace").strip()
    return (text[:200] or "(empty body)"), None, None
