"""``prefix`` (the default): the upstream holding the longest cached prefix, unless busy.

For a request whose prompt the router can read (``router.prefix``), the upstream that
was sent the longest leading part of it most likely still holds its KV cache, and gets
it — unless that would make it a hot spot. An upstream's load is its requests in flight
(this one included) times its latency (an EWMA of its answers' durations: the inverse of
its speed per request); the home's load may exceed the fleet's, its whole load spread by
speed, by at most ``BALANCE`` times plus ``SLACK`` requests' worth. Past that, and for a
prompt no upstream holds, the request goes to the least loaded upstream with room, so one
tenant flooding the fleet spreads over every GPU, and a slow GPU gets affinity traffic
only in proportion to its measured speed. When no upstream has room, and for requests
without a prompt (other paths, other bodies), the capacity policy decides.

Why latency and not the capacity policy's measured rate: an engine that batches finishes
more requests per second the more it runs, so ``(in_flight + 1) / rate`` stays flat as it
becomes a hot spot (measured: one tenant's flood left 97% of the requests on its home).

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


#: Weight of one answer's latency in an upstream's latency EWMA.
LATENCY_ALPHA: Final = 0.1


class Prefix:
    """Prefix affinity with a load guard from in-flight counts weighted by latency."""

    name = "prefix"
    #: The admission hands this policy the prompt's block keys.
    uses_prompt = True

    def __init__(self, index: PrefixIndex, rng: random.Random | None = None) -> None:
        self.index = index
        self._rng = rng or random.Random()
        self._capacity = Capacity(self._rng)
        #: Per upstream id: answers seen, and the EWMA of their latency (seconds).
        self._seen: dict[str, int] = {}
        self._latency: dict[str, float] = {}
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
        choice, home_ready = self._choose(ready, matched)
        if choice is None:
            # No room anywhere: the capacity policy says wait (None) or hold (a float).
            return self._capacity.choose(ready, key, waiting, waited_s)
        if home_ready and not matched.get(self.index.bit(choice.id)):
            return choice  # an overflow: its home stays where it was
        self.index.record(prompt, choice.id)
        return choice

    def latency(self, u: Upstream) -> float:
        """The EWMA of ``u``'s answers' latency (0.0 before its first answer)."""
        seen = self._seen.get(u.id, 0)
        if u.served != seen and u.latencies:
            self._seen[u.id] = u.served
            sample = u.latencies[-1]
            old = self._latency.get(u.id)
            self._latency[u.id] = sample if old is None else old + LATENCY_ALPHA * (sample - old)
        return self._latency.get(u.id, 0.0)

    def _choose(
        self, ready: Sequence[Upstream], matched: dict[int, int]
    ) -> tuple[Upstream | None, bool]:
        """The affine upstream within the load guard, else the least loaded one with room;
        and whether any upstream holding the prompt is ready."""
        # Load is in-flight requests weighted by each upstream's latency: an engine that
        # batches finishes more requests per second the more it runs, so its measured
        # rate rises with its load and ``in_flight / rate`` stays flat as it turns into a
        # hot spot; latency per request does not flatter it. Not measured yet: the mean.
        lat = [self.latency(u) for u in ready]
        known = [x for x in lat if x > 0.0]
        default = sum(known) / len(known) if known else 1.0
        bit = self.index.bit
        total_load = 0
        total_speed = 0.0
        best: Upstream | None = None
        best_score = 0.0
        ties = 0
        affine: Upstream | None = None
        affine_n = 0
        affine_score = 0.0
        home_ready = False
        rng = self._rng
        for u, x in zip(ready, lat, strict=True):
            x = x or default
            total_load += u.in_flight + 1
            total_speed += 1.0 / x
            n = matched.get(bit(u.id), 0) if matched else 0
            home_ready = home_ready or n > 0
            if not u.has_room():
                continue
            score = (u.in_flight + 1) * x
            if best is None or score < best_score:
                best, best_score, ties = u, score, 1
            elif score == best_score:
                ties += 1
                if rng.random() * ties < 1.0:
                    best = u
            if n and (n > affine_n or (n == affine_n and score < affine_score)):
                affine, affine_n, affine_score = u, n, score
        if affine is not None:
            # The reference is the fleet's load spread by speed, not the least loaded
            # upstream's: engines that batch finish their requests in bursts, so one of
            # them is often empty for a moment, and measured against that moment a home
            # with an ordinary load looked hot (9% of requests spilled, most of them to an
            # engine without the prompt, whose cold prefills stalled its whole batch:
            # docs/performance.md, "Where the TTFT tail came from").
            fair = total_load / total_speed
            if affine_score <= BALANCE * fair + SLACK * len(ready) / total_speed:
                self.affine += 1
                return affine, home_ready
        if home_ready:
            self.by_load += 1
        return best, home_ready
