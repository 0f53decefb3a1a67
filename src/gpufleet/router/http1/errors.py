"""How an exchange with an upstream fails: whether the request can have run there."""

from __future__ import annotations

from gpufleet.errors import UpstreamError


class NotSent(UpstreamError):
    """The request was certainly not delivered: no connection, or it closed before the write."""


class Lost(UpstreamError):
    """The request was written, then the connection closed with no answer: it may have run."""

    def __init__(self, message: str, *, reused: bool) -> None:
        super().__init__(message)
        #: The connection was a kept-alive one (the upstream may have closed it as idle).
        self.reused = reused


class AnswerBroken(UpstreamError):
    """The answer broke off after it had begun, or was not valid HTTP/1.1."""
