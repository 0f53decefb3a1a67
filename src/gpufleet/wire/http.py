"""The one internal HTTP client: how gpufleet's processes and tools call each other.

The router's health probes and ``/stats`` reads, the fleet's admin sync, ``monitor``,
``bench`` and ``status`` all go through :class:`PeerClient`, so each call has the same
rules: a total time budget (connect, headers and body together), an optional Bearer
token, no redirects followed unless asked, a bounded answer, and failures raised as
:class:`~gpufleet.errors.RequestFailed` (``status`` and ``retryable`` set), never as an
aiohttp or socket exception. A JSON answer is decoded once, into the wire type the
caller names (a ``msgspec.Struct``) or into plain JSON with bounded nesting.

::

    async with PeerClient(token=admin_token) as http:
        answer = await http.request("GET", url + "/health")        # any status
        stats = await http.call("GET", url + "/stats", into=SomeStruct)  # 2xx or raises
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, TypeVar, overload

import aiohttp

from gpufleet import wire
from gpufleet.errors import ClientClosed, ConfigError, RequestFailed
from gpufleet.wire.peer_answer import RETRYABLE_STATUSES, PeerAnswer

T = TypeVar("T")

#: Seconds one call may take, connect to last body byte, unless the caller says otherwise.
DEFAULT_TIMEOUT_S: Final = 5.0
#: The largest answer read (a /stats of a few hundred upstreams is well under this).
MAX_ANSWER_BYTES: Final = 1 << 20
#: Redirects followed at most, when a call asks to follow them.
MAX_REDIRECTS: Final = 5
#: aiohttp's own timers off for our calls: ``asyncio.timeout`` holds each call's budget
#: (one timer, connect to last byte, rather than aiohttp's besides it).
_OURS: Final = aiohttp.ClientTimeout()


class PeerClient:
    """An aiohttp session with gpufleet's rules for calls between its processes.

    Args:
        token: sent as ``Authorization: Bearer …`` on every call (a call may override).
        timeout_s: default budget of one call, connect to last byte.
        max_bytes: default bound of an answer's body.
        connections_per_host: keep-alive connections per host (0: no limit); the
            router's probes have connections of their own, so a busy proxy path never
            delays them.
        session: an aiohttp session to use instead of one of its own (not closed here).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_bytes: int = MAX_ANSWER_BYTES,
        connections_per_host: int = 0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ConfigError(f"timeout_s must be a positive number, got {timeout_s}")
        self._token = token
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._per_host = connections_per_host
        self._session = session
        self._owns_session = session is None
        self._closed = False

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections (a session passed in is left to its owner)."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session underneath (for code that streams; opened on first use)."""
        if self._closed:
            raise ClientClosed("PeerClient used after aclose()")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=self._per_host),
                # Each call of ours sets its own budget; this one bounds code that uses
                # ``session`` directly (a streamed download: generate --server-side).
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                trust_env=False,
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: object = None,
        data: bytes | aiohttp.FormData | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
        follow_redirects: bool = False,
    ) -> PeerAnswer:
        """Send one request and read its answer, whatever the status.

        The body is ``json`` (encoded here) or ``data`` as it is (bytes, or a multipart
        form: a file upload), not both.

        Raises:
            RequestFailed: nothing answered within the budget (``retryable``), or the
                answer was larger than ``max_bytes``.
        """
        budget = self.timeout_s if timeout_s is None else timeout_s
        limit = self.max_bytes if max_bytes is None else max_bytes
        sent = dict(headers or {})
        bearer = token if token is not None else self._token
        if bearer:
            sent["Authorization"] = f"Bearer {bearer}"
        if json is not None:  # plain data or wire Structs, one encoder for both
            if data is not None:
                raise ValueError("json or data, not both")
            data = wire.encode(json)
            sent.setdefault("Content-Type", wire.JSON_CONTENT_TYPE)
        session = self.session
        try:
            async with (
                asyncio.timeout(budget),
                session.request(
                    method,
                    url,
                    data=data,
                    headers=sent,
                    allow_redirects=follow_redirects,
                    max_redirects=MAX_REDIRECTS,
                    timeout=_OURS,
                ) as resp,
            ):
                body = await _read_bounded(resp, limit)
                if body is None:
                    raise RequestFailed(
                        f"{method} {url}: the answer is over {limit} bytes", status=resp.status
                    )
                return PeerAnswer(method, url, resp.status, body, _headers(resp))
        except TimeoutError as exc:
            raise RequestFailed(
                f"{method} {url}: no answer within {budget:g}s", retryable=True
            ) from exc
        except aiohttp.TooManyRedirects as exc:
            raise RequestFailed(f"{method} {url}: over {MAX_REDIRECTS} redirects") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError: a URL aiohttp cannot use (InvalidURL is one too).
            reason = str(exc) or type(exc).__name__
            raise RequestFailed(f"{method} {url}: {reason}", retryable=True) from exc

    @overload
    async def call(
        self,
        method: str,
        url: str,
        *,
        into: type[T],
        json: object = ...,
        data: bytes | aiohttp.FormData | None = ...,
        token: str | None = ...,
        timeout_s: float | None = ...,
        max_bytes: int | None = ...,
    ) -> T: ...

    @overload
    async def call(
        self,
        method: str,
        url: str,
        *,
        into: None = ...,
        json: object = ...,
        data: bytes | aiohttp.FormData | None = ...,
        token: str | None = ...,
        timeout_s: float | None = ...,
        max_bytes: int | None = ...,
    ) -> Any: ...

    async def call(
        self,
        method: str,
        url: str,
        *,
        into: type[Any] | None = None,
        json: object = None,
        data: bytes | aiohttp.FormData | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
    ) -> Any:
        """Send one request that must answer 2xx; its JSON, decoded into ``into`` if given.

        Without ``into`` the answer is plain JSON (None for an empty body).

        Raises:
            RequestFailed: nothing answered, another status (with the error's name and
                message), a redirect, an answer over ``max_bytes``, or not that JSON.
        """
        answer = await self.request(
            method,
            url,
            json=json,
            data=data,
            token=token,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
            headers={"Accept": wire.JSON_CONTENT_TYPE},
        )
        if not answer.is_ok:
            raise answer.failure()
        return answer.json() if into is None else answer.decode(into)

    @overload
    async def get(self, url: str, *, into: type[T], timeout_s: float | None = ...) -> T: ...

    @overload
    async def get(self, url: str, *, into: None = ..., timeout_s: float | None = ...) -> Any: ...

    async def get(
        self, url: str, *, into: type[Any] | None = None, timeout_s: float | None = None
    ) -> Any:
        """``GET url`` that must answer 2xx JSON (see :meth:`call`)."""
        return await self.call("GET", url, into=into, timeout_s=timeout_s)


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is longer than ``limit`` (reading stops there)."""
    if resp.content_length is not None:
        # aiohttp reads no more than Content-Length: one read, bounded by the check.
        return None if resp.content_length > limit else await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _headers(resp: aiohttp.ClientResponse) -> Mapping[str, str]:
    # CIMultiDictProxy: case-insensitive lookups, as HTTP header names are.
    return resp.headers


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_ANSWER_BYTES",
    "RETRYABLE_STATUSES",
    "PeerAnswer",
    "PeerClient",
]
