"""``prefix`` (the default): the upstream holding the longest cached prefix, unless busy.

For a request whose prompt the router can read (``router.prefix``), the upstream that
was sent the longest leading part of it most likely still holds its KV cache, and gets
it — unless that would make it a hot spot: its expected wait, ``(in_flight + 1) /
rate`` as the capacity policy measures it, may exceed the fleet's (its whole load spread
by measured speed) by at most ``BALANCE`` times plus ``SLACK`` requests' worth. Past
that the request goes by load (the capacity policy), so one tenant flooding the fleet
spreads over every GPU, and a slow GPU gets affinity traffic only in proportion to its
measured speed. Requests without
a prompt (other paths, other bodies) are routed by the capacity policy alone.

Where a prompt goes is remembered when it went there by affinity, or when no upstream
holding it is ready (a new home). An overflow sent by load is not a second home: with
two homes a tenant alternates between them and both engines' caches hold it, evicting
each other's tenants (measured in docs/performance.md: hit rate 0.81 vs 0.93); with one,
it returns home as soon as the load allows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from gpufleet.router.policies.base import Choice
from gpufleet.router.policies.capacity import Capacity
from gpufleet.router.prefix import PrefixIndex
from gpufleet.router.upstream import Upstream

#: Affinity may cost at most this factor of the fleet's expected wait ...
BALANCE: Final = 1.5
#: ... plus this many requests at the fleet's mean rate. A miss costs an engine a
#: whole prefill and makes the prompt's tenant live on one more engine (the index then
#: sends it to either), so affinity is worth a few queued requests: at 2.0, 4 equal
#: engines at 12 in flight spilled ~4% of requests and hit their caches 0.63 of the time;
#: at 8.0, 0.91 (benchmarks/llm_routing.py, docs/performance.md).
SLACK: Final = 8.0


class Prefix:
    """Prefix affinity with the capacity policy as the load guard and the fallback."""

    name = "prefix"
    #: The admission hands this policy the prompt's block keys.
    uses_prompt = True

    def __init__(self, index: PrefixIndex, rng: random.Random | None = None) -> None:
        self.index = index
        self._capacity = Capacity(rng)
        #: Requests sent by affinity, and those that had a match but went by load.
        self.affine = 0
        self.by_load = 0

    def choose(
        self,
        ready: Sequence[Upstream],
        key: str | None,
        waiting: int,
        waited_s: float,
        prompt: Sequence[int] | None = None,
    ) -> Choice:
        """The upstream with the longest cached prefix within the load guard, else by load."""
        if not prompt:
            return self._capacity.choose(ready, key, waiting, waited_s)
        matched = self.index.match(prompt)
        choice: Choice = None
        home_ready = False
        if matched:
            choice, home_ready = self._affine(ready, matched)
            if choice is None:
                self.by_load += 1
            else:
                self.affine += 1
        if choice is None:
            choice = self._capacity.choose(ready, key, waiting, waited_s)
            if home_ready:
                return choice  # an overflow: its home stays where it was
        if isinstance(choice, Upstream):
            self.index.record(prompt, choice.id)
        return choice

    def _affine(
        self, ready: Sequence[Upstream], matched: dict[int, int]
    ) -> tuple[Upstream | None, bool]:
        """The affine choice within the load guard, and whether any home of it is ready."""
        known = 0.0
        n_known = 0
        for u in ready:
            if u.rate > 0.0:
                known += u.rate
                n_known += 1
        default_rate = known / n_known if n_known else 1.0
        bit = self.index.bit
        total_load = 0
        total_rate = 0.0
        affine: Upstream | None = None
        affine_n = 0
        affine_score = 0.0
        home_ready = False
        for u in ready:
            rate = u.rate or default_rate
            total_load += u.in_flight + 1
            total_rate += rate
            n = matched.get(bit(u.id), 0)
            home_ready = home_ready or n > 0
            if not n or not u.has_room():
                continue
            score = (u.in_flight + 1) / rate
            if n > affine_n or (n == affine_n and score < affine_score):
                affine, affine_n, affine_score = u, n, score
        if affine is None:
            return None, home_ready
        # The reference is the fleet's wait if its load were spread by speed, not the
        # least loaded upstream's: engines that batch finish their requests in bursts, so
        # one of them is often empty for a moment, and measured against that moment a
        # home with an ordinary load looked hot (9% of requests spilled, most of them to
        # an engine without the prompt, whose cold prefills stalled its whole batch:
        # docs/performance.md, "Where the TTFT tail came from").
        fair = total_load / total_rate
        if affine_score > BALANCE * fair + SLACK * len(ready) / total_rate:
            return None, home_ready
        return affine, home_ready
