"""An answer the Batch API refuses with, in OpenAI's error shape.

``{"error": {"message", "type", "param", "code"}}`` (and ``line`` where an input line is
at fault), so the official ``openai`` client raises its own matching error.
"""

from __future__ import annotations

from aiohttp import web


class Refused(Exception):
    """An OpenAI-shaped error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        line: int | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, str | int | None] = {
            "message": message,
            "type": kind,
            "param": param,
            "code": code,
        }
        if line is not None:
            self.body["line"] = line

    def response(self) -> web.Response:
        """The error as a JSON answer."""
        return web.json_response({"error": self.body}, status=self.status)


def not_found(what: str, ident: str, param: str = "id") -> Refused:
    """404: no such file or batch."""
    return Refused(404, f"No such {what}: {ident!r}", param=param)


__all__ = ["Refused", "not_found"]
