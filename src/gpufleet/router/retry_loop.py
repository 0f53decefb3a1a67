"""The attempts of one request: until one answers, none may follow, or no upstream is left.

Each attempt takes an upstream from the pool's admission (``exclude`` keeps the request
from going back to one that failed it; a refusal does not count, since the upstream takes
it again once it has room, which is what Retry-After asks), runs ``send`` on it, and on
an ``AttemptFailed`` asks ``retries.may_retry`` and the retry budget whether another may
follow. Every retry taken from the budget is given back when the request ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web
from multidict import istr

from gpufleet import wire
from gpufleet.errors import AdmissionRejected, NoHealthyBackend, UpstreamTimeout
from gpufleet.router.admission import Admission
from gpufleet.router.forwarded import Forwarded
from gpufleet.router.retries import REFUSED, AttemptFailed, may_retry
from gpufleet.router.retry_budget import RetryBudget
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import Upstream

if TYPE_CHECKING:
    from gpufleet.router.proxy import ProxySettings

log = logging.getLogger("gpufleet.router")

_ATTEMPTS: Final = istr(wire.ATTEMPTS_HEADER)

#: One attempt on the upstream given: the answer, or ``AttemptFailed``.
Send = Callable[[Upstream], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Ask:
    """What a request asks of admission, the same for each of its attempts."""

    admission: Admission
    #: The prompt's blocks, where the pool's policy routes by prompt.
    prompt: list[int] | None
    #: The sticky header's value.
    key: str | None
    priority: str
    deadline: float


class RetryLoop:
    """Runs a request's attempts; counts retries and what the budget refused."""

    def __init__(self, settings: ProxySettings, totals: Totals, budget: RetryBudget) -> None:
        self.settings = settings
        self.totals = totals
        self.budget = budget

    async def run(
        self, send: Send, fwd: Forwarded, ask: Ask, method: str, target: str
    ) -> web.StreamResponse:
        """Attempts (``send``) until one answers, none may follow, or no upstream is left.

        Raises:
            GpufleetError: no upstream took the first attempt, or the last attempt's error.
        """
        exclude: list[str] = []
        failed: AttemptFailed | None = None
        ran_again = False
        taken = 0
        try:
            while True:
                try:
                    upstream = await ask.admission.acquire(
                        ask.key, exclude, ask.deadline, ask.prompt, ask.priority
                    )
                except (NoHealthyBackend, AdmissionRejected, UpstreamTimeout):
                    if failed is not None:
                        return self._give_up(failed, fwd)
                    raise
                fwd.attempts += 1
                try:
                    return await send(upstream)
                except AttemptFailed as exc:
                    failed = exc
                    if exc.reason != REFUSED:
                        exclude.append(upstream.id)
                    if not self._may_follow(exc, upstream, method, fwd, ran_again):
                        return self._give_up(exc, fwd)
                    taken += 1
                    if exc.may_have_run:
                        ran_again = True
                    self.totals.retry(exc.reason)
                    log.debug(
                        "%s: retrying %s %s (%s on %s)", fwd.rid, method, target, exc, upstream.id
                    )
        finally:
            for _ in range(taken):
                self.budget.done()

    def _may_follow(
        self,
        failed: AttemptFailed,
        upstream: Upstream,
        method: str,
        fwd: Forwarded,
        ran_again: bool,
    ) -> bool:
        """Whether another attempt follows ``failed``: allowed, and one taken from the budget."""
        settings = self.settings
        if not may_retry(
            failed,
            attempts=fwd.attempts,
            retries=settings.retries,
            ran_again=ran_again,
            is_gpufleet=upstream.is_gpufleet,
            method=method,
            retry_lost=settings.retry_lost,
        ):
            return False
        if not self.budget.try_take():
            self.totals.budget_exhausted += 1
            return False
        return True

    def _give_up(self, failed: AttemptFailed, fwd: Forwarded) -> web.StreamResponse:
        """No attempt follows ``failed``: answer what it left."""
        if failed.answer is not None:
            self.totals.count(failed.answer.status)
            failed.answer.headers[_ATTEMPTS] = str(fwd.attempts)
            return failed.answer
        assert failed.error is not None
        raise failed.error


__all__ = ["Ask", "RetryLoop", "Send"]
