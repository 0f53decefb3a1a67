"""``capacity`` (the default): shortest expected wait, from each upstream's measured rate.

Each upstream's score is ``(in_flight + 1) / rate``: when this request would finish if
sent there, with ``rate`` the service rate the router measured (requests per busy
second, an EWMA). The upstream with room and the lowest score wins, so a GPU four times
faster takes about four times the work with no weights configured.

Work-conserving balancers still hand a request to a slow upstream the moment it is the
only one with room, and that request then takes the slow GPU's full time. This policy
holds it instead when the faster upstreams at their cap are expected to finish the
waiting requests, this one included, before the slow one would have: the queue drains
to them, and the slow upstream only takes work when the backlog is long enough that it
helps. A held request is never held longer than the free upstream would have needed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gpufleet.router.policies.base import Choice
from gpufleet.router.upstream import Upstream


class Capacity:
    """Shortest expected wait with a cap per upstream."""

    name = "capacity"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(
        self,
        ready: Sequence[Upstream],
        key: str | None,
        waiting: int,
        waited_s: float,
        prompt: Sequence[int] | None = None,
    ) -> Choice:
        """The upstream with room that would finish this request first, or a hold."""
        # Upstreams not measured yet count as the mean of the measured ones (or all
        # equal: least-outstanding) until their own rate is known.
        known = 0.0
        n_known = 0
        for u in ready:
            if u.rate > 0.0:
                known += u.rate
                n_known += 1
        default_rate = known / n_known if n_known else 1.0

        best: Upstream | None = None
        best_score = 0.0
        ties = 0
        rng = self._rng
        for u in ready:
            if not u.has_room():
                continue
            score = (u.in_flight + 1) / (u.rate or default_rate)
            if best is None or score < best_score:
                best, best_score, ties = u, score, 1
            elif score == best_score:
                ties += 1
                if rng.random() * ties < 1.0:
                    best = u
        if best is None or n_known < 2 or waited_s >= best_score:
            return best

        # Would the faster upstreams that are at their cap get through the queue, this
        # request included, before ``best`` finishes it?
        busy_rate = 0.0
        busy_load = 0
        for u in ready:
            if u.in_flight >= u.max_outstanding and not u.is_stuck():
                rate = u.rate or default_rate
                if (u.in_flight + 1) / rate < best_score:
                    busy_rate += rate
                    busy_load += u.in_flight
        if busy_rate > 0.0:
            wait_there = (waiting + busy_load) / busy_rate
            if wait_there < best_score:
                return max(best_score - waited_s, 0.001)
        return best
