"""Passive health: what the proxy holds against an upstream whose attempt failed.

A failure counts against the upstream; past ``max_fails`` within ``fail_timeout_s`` it is
ejected for ``fail_timeout_s``, but never more than ``max_ejection_percent`` of its pool
at once (as Envoy's outlier detection), and never the last ready upstream of a pool for a
5xx that may have come from the request. A refusal ("not started": 503 overloaded, 429)
is no failure: the upstream only gets no new work until its ``Retry-After`` ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gpufleet import wire
from gpufleet.router.admission import Admission
from gpufleet.router.pool import Registry
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import EJECTED, READY, Upstream

log = logging.getLogger("gpufleet.router")


class Ejector:
    """Counts attempts' failures against upstreams and ejects them passively."""

    def __init__(
        self,
        registry: Registry,
        admissions: dict[str, Admission],
        totals: Totals,
        *,
        max_fails: int,
        fail_timeout_s: float,
        max_ejection_percent: float,
        clock: Callable[[], float],
    ) -> None:
        self.registry = registry
        self.admissions = admissions
        self.totals = totals
        self.max_fails = max_fails
        self.fail_timeout_s = fail_timeout_s
        self.max_ejection_percent = max_ejection_percent
        self._clock = clock

    def failed(self, upstream: Upstream, *, input_shaped: bool = False) -> None:
        """Count a failure against ``upstream``; eject it passively past max_fails.

        ``input_shaped``: a 5xx answer the upstream did not call its own (it may have come
        from the request): that never ejects the last ready upstream of a pool.
        """
        now = self._clock()
        if (
            upstream.record_failure(now, self.max_fails, self.fail_timeout_s)
            and upstream.state == READY
        ):
            if not self._may_eject(upstream, input_shaped):
                self.totals.ejections_held += 1
                log.debug("not ejecting %s: too few upstreams would be left", upstream.url)
                return
            upstream.ejected_until = now + self.fail_timeout_s
            log.warning(
                "ejecting %s: %d failures in %gs",
                upstream.url,
                self.max_fails,
                self.fail_timeout_s,
            )
            self.registry.set_state(upstream, EJECTED)

    def refused(self, upstream: Upstream, retry_after_header: str | None) -> None:
        """A "not started" refusal: the upstream gets no more work until it has room."""
        retry_after = wire.parse_retry_after(retry_after_header) or 1.0
        # A long Retry-After (a per-tenant rate limit, say) must not take a ready upstream
        # out of rotation for an hour: at most the passive ejection window.
        retry_after = min(retry_after, self.fail_timeout_s)
        upstream.refused(retry_after)
        # Its slots may all be given back before the wait is over: look again then.
        self.dispatch_later(upstream, retry_after)

    def dispatch_later(self, upstream: Upstream, delay_s: float) -> None:
        """Run the pool's dispatch once ``delay_s`` has passed (a hold on it ends then)."""
        admission = self.admissions.get(upstream.pool)
        if admission is not None:
            asyncio.get_running_loop().call_later(delay_s, admission.dispatch)

    def _may_eject(self, upstream: Upstream, input_shaped: bool) -> bool:
        """Whether a passive ejection of ``upstream`` keeps enough of its pool (as Envoy's
        ``max_ejection_percent``: at most that share ejected at once, always at least one)."""
        pool = self.registry.pools.get(upstream.pool)
        if pool is None:
            return True
        if input_shaped and len(pool.ready) <= 1:
            return False
        out = sum(1 for u in pool.members if u.state == EJECTED)
        share = int(len(pool.members) * self.max_ejection_percent / 100)
        return out < max(1, share)
