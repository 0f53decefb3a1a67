"""What one request carries through its attempts, and its body read whole first.

The body is read before any attempt (bounded by ``--max-body-mb`` and the request's
timeout): a retry can replay it, and a client that uploads slowly never holds an
upstream's slot.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gpufleet.errors import BadRequest, PayloadTooLarge, RequestTimeout


class Forwarded:
    """What one request carries through its attempts."""

    __slots__ = (
        "attempts",
        "body",
        "first_byte_s",
        "headers",
        "llm",
        "method_bytes",
        "no_body",
        "rid",
        "target_bytes",
    )

    def __init__(self, rid: str, first_byte_s: float) -> None:
        self.rid = rid
        self.attempts = 0
        #: The caller's own first-byte timeout (``X-Gpufleet-First-Byte-Timeout``), or 0.
        self.first_byte_s = first_byte_s
        #: An LLM route (chat, completions, generate): its tokens are counted.
        self.llm = False
        #: The request line is ``method_bytes + upstream's path prefix + target_bytes``.
        self.method_bytes = b""
        self.target_bytes = b""
        #: The header lines passed upstream (all but Host and the deadline).
        self.headers = b""
        self.body: bytes | None = None
        #: A HEAD request: the answer has no body whatever its head says.
        self.no_body = False


async def read_body(request: web.Request, max_body_bytes: int, timeout_s: float) -> bytes | None:
    """The request's whole body (``None`` without one), within the size and time limits.

    Raises:
        PayloadTooLarge, BadRequest, RequestTimeout: as the body is over the limit,
            malformed, or not received within ``timeout_s``.
    """
    if not request.body_exists:
        return None
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit")
    try:
        if request.content.is_eof():
            return await request.read()  # all here: no timer needed
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("body is over the limit") from None
    except HttpProcessingError as exc:
        raise BadRequest(f"malformed request body: {exc.message}") from None
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s:g}s") from None
