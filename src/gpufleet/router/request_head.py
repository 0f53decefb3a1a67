"""What the router reads from a request's own headers before it is routed.

Its id (``X-Request-Id``, kept when fit to pass on, else minted), the caller's own
first-byte timeout, its admission class (``X-Gpufleet-Priority``), and the header lines
a request made in this process (the Batch API's) passes upstream, as
``headers.request_headers`` makes them for a client's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from gpufleet import wire
from gpufleet.errors import BadRequest
from gpufleet.router.admission import INTERACTIVE, PRIORITIES

#: The longest client ``X-Request-Id`` kept (longer ones, or not printable ASCII: minted).
MAX_REQUEST_ID: Final = 200

#: Headers of an in-process request not passed on as given (the proxy sets or uses them).
_OWN_DROP: Final = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "x-request-id",
        "x-request-timeout",
        wire.FIRST_BYTE_TIMEOUT_HEADER.lower(),
    }
)


class RequestIds:
    """Request ids: the caller's when fit to pass on, else ``<process prefix>-<n>``."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._next = 0

    def take(self, given: str | None) -> str:
        """The caller's ``X-Request-Id`` when it is fit to pass on, else a new one."""
        if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable():
            return given
        self._next += 1
        return f"{self._prefix}-{self._next:x}"


def seconds(value: str | None) -> float:
    """A positive number of seconds from a header, else 0."""
    if not value:
        return 0.0
    try:
        number = float(value)
    except ValueError:
        return 0.0
    return number if 0 < number < 1e9 else 0.0


def priority(value: str | None) -> str:
    """The admission class a request asks for (``X-Gpufleet-Priority``); unset: interactive.

    Raises:
        BadRequest: a value that is neither ``interactive`` nor ``batch``.
    """
    if value is None:
        return INTERACTIVE
    name = value.strip().lower()
    if name not in PRIORITIES:
        raise BadRequest(f"{wire.PRIORITY_HEADER} must be one of {', '.join(PRIORITIES)}")
    return name


def own_headers(headers: Mapping[str, str], rid: str, body: bytes | None, method: str) -> bytes:
    """The header lines an in-process request passes upstream (all but Host and the
    deadline), as ``request_headers`` makes them for a client's."""
    lines = [
        f"{name}: {value}\r\n".encode("latin-1")
        for name, value in headers.items()
        if name.lower() not in _OWN_DROP
    ]
    lines.append(f"{wire.REQUEST_ID_HEADER}: {rid}\r\n".encode("latin-1"))
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n".encode())
    elif method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: 0\r\n")
    return b"".join(lines)


__all__ = ["MAX_REQUEST_ID", "RequestIds", "own_headers", "priority", "seconds"]
