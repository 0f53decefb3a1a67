"""Why an attempt failed, and whether another attempt may follow it.

Each failed attempt is one of ``RETRY_REASONS``: *not sent* (no connection), *refused*
(a gpufleet worker's 503 ``WorkerOverloaded``/``WorkerUnavailable``, or a 429: it did not
start), *lost* (sent, then the connection closed with no answer: it may have run) or
*timeout* (sent, no answer began within the first-byte timeout). The first two may go
elsewhere; the last two only where running twice is harmless (a gpufleet worker, an
idempotent method, or ``--retry-lost``) and once. A timed-out attempt goes elsewhere only
when it was queued behind an older one on that upstream: the oldest may be what stuck
it. Nothing is retried once bytes reached the client, nor after a 4xx or any other 5xx.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from gpufleet.errors import GpufleetError

NOT_SENT: Final = "not_sent"  # no connection: the request cannot have run
REFUSED: Final = "refused"  # the upstream said it did not start it (queue full, 429)
LOST: Final = "lost"  # sent, then no answer (connection closed): it may have run
TIMEOUT: Final = "timeout"  # sent, no answer within the first-byte timeout: moved on
RETRY_REASONS: Final = (NOT_SENT, REFUSED, LOST, TIMEOUT)
#: Methods that may be sent again after an attempt was lost (RFC 9110 §9.2.2).
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class AttemptFailed(Exception):
    """One attempt failed before any byte reached the client; maybe another may follow."""

    def __init__(
        self,
        reason: str,
        error: GpufleetError | None,
        answer: web.Response | None = None,
        *,
        may_retry: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        #: What the client gets if no attempt follows: our error, or the upstream's answer.
        self.error = error
        self.answer = answer
        self.may_retry = may_retry

    @property
    def may_have_run(self) -> bool:
        """True when the request was sent and may have run upstream (lost, timed out)."""
        return self.reason in (LOST, TIMEOUT)


def may_retry(
    failed: AttemptFailed,
    *,
    attempts: int,
    retries: int,
    ran_again: bool,
    is_gpufleet: bool,
    method: str,
    retry_lost: bool,
) -> bool:
    """Whether the attempt that failed with ``failed`` may be followed by another.

    Args:
        attempts: attempts made so far (``retries`` more than the first are allowed).
        ran_again: an attempt that may have run was already retried once.
        is_gpufleet: the failed attempt's upstream is a gpufleet worker.
    """
    if not failed.may_retry or attempts > retries:
        return False
    if failed.may_have_run:
        # Sent and maybe run: again only where running twice is harmless, and once.
        return not ran_again and (is_gpufleet or method in IDEMPOTENT or retry_lost)
    return True
