"""``PeerAnswer``: one answer of a peer, read whole, and what its status means.

``PeerClient.request`` returns one whatever the status; ``PeerClient.call`` takes a 2xx
one and decodes it once (``decode``, or ``json`` with bounded nesting); another status
becomes the ``RequestFailed`` it means (``failure``: our error code and message or the
first bytes of a foreign body, ``retryable`` for a busy server, ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from gpufleet import wire
from gpufleet.errors import RequestFailed

T = TypeVar("T")

#: Statuses worth another try later or elsewhere: the server was busy, not wrong.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """One answer, read whole (at most the call's ``max_bytes``)."""

    method: str
    url: str
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON (bounded nesting); None for an empty body.

        Raises:
            RequestFailed: the body is not JSON.
        """
        if not self.body:
            return None
        try:
            return wire.decode_json(self.body)
        except ValueError as exc:
            raise self._undecodable(exc) from exc

    def decode(self, into: type[T]) -> T:
        """The body decoded into ``into`` (a ``msgspec.Struct``, a list of them, …).

        Raises:
            RequestFailed: the body is not JSON or not of that shape.
        """
        try:
            return wire.decode(self.body, into)
        except wire.WireDecodeError as exc:
            raise self._undecodable(exc) from exc

    def failure(self) -> RequestFailed:
        """This answer as the error its status means (for a status the caller refuses)."""
        name = detail = None
        try:
            error = wire.decode(self.body, wire.AnyErrorBody)
        except wire.WireDecodeError:  # not ours: an HTML page, a proxy's text
            detail = self.body[:200].decode("utf-8", "replace").strip()
        else:
            name = error.name
            detail = error.message if isinstance(error.error, str) else error.error.message
        if 300 <= self.status < 400:
            where = self.headers.get("Location", "?")
            detail = f"redirected to {where}; redirects are not followed"
        text = f"{self.method} {self.url}: HTTP {self.status}"
        text += f" {name}" if name else ""
        text += f": {detail}" if detail else ""
        retry_after = wire.parse_retry_after(self.headers.get("Retry-After"))
        return RequestFailed(
            text,
            status=self.status,
            retryable=self.status in RETRYABLE_STATUSES,
            retry_after_s=retry_after,
        )

    def _undecodable(self, exc: Exception) -> RequestFailed:
        return RequestFailed(
            f"{self.method} {self.url}: the answer is not the JSON expected ({exc})",
            status=self.status,
        )


__all__ = ["RETRYABLE_STATUSES", "PeerAnswer"]
