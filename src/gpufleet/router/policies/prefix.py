"""``prefix`` (the default): the least loaded holder of the prompt's longest cached prefix.

For a request whose prompt the router can read (``router.prefix``), the upstreams that
were sent the longest leading part of it most likely still hold its KV cache: the least
loaded of them gets it — unless that would make it a hot spot. An upstream's load is its
requests in flight (this one included) times its latency (an EWMA of its answers'
durations: the inverse of its speed per request); a holder's load may exceed the fleet's,
its whole load spread by speed, by at most ``BALANCE`` times plus ``SLACK`` requests'
worth. Past that the request goes to the least loaded upstream with room, as an overflow
that does not make it a holder. A slow GPU gets affinity traffic only in proportion to
its measured speed. When no upstream has room, and for requests without a prompt (other
paths, other bodies), the capacity policy decides.

A prefix has as many holders as it needs: when even its least loaded holder has carried
``SPREAD`` requests' worth more than an upstream without it, averaged over the last
decisions (a lasting imbalance, as one tenant flooding the fleet makes), that upstream
becomes one more holder. So a flood spreads evenly over every GPU, each with the
prompt cached, while a tenant of many keeps one home.

A new prefix (no upstream holds any of it) goes where the index holds the fewest blocks
per unit of speed, among the upstreams whose load is within ``PLACE_SLACK`` requests of
the least loaded one: the KV caches fill evenly (as the SGLang gateway places one on the
smallest tree) rather than by which engine happened to be least loaded at a tenant's
first request, and a stream of new prompts (nothing shared) still goes by load.

Why latency and not the capacity policy's measured rate: an engine that batches finishes
more requests per second the more it runs, so ``(in_flight + 1) / rate`` stays flat as it
becomes a hot spot (measured: one tenant's flood left 97% of the requests on its home).
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


#: A prefix gets one more holder when its least loaded holder's load, averaged over the
#: last requests, exceeds an upstream's without it by this many requests at the fleet's
#: mean latency: a lasting imbalance (one tenant's flood), not an engine that is empty
#: for a moment (engines that batch finish in bursts).
SPREAD: Final = 12.0
#: A new prefix goes where the index holds least among the upstreams at most this many
#: requests (at the fleet's mean latency) above the least loaded one. Within the whole
#: load guard instead, prompts that share nothing piled up on the engines that held
#: least: 22.1 vs 34.0 req/s, engine queues of seconds (docs/performance.md).
PLACE_SLACK: Final = 2.0
#: Weight of one routing decision in each upstream's averaged load (~100 decisions).
LOAD_ALPHA: Final = 0.01

#: Weight of one answer's latency in an upstream's latency EWMA.
LATENCY_ALPHA: Final = 0.1


class Prefix:
    """Prefix affinity over several holders, with a load guard from latency-weighted load."""

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
        #: Per upstream id: its load (in flight x latency), averaged over the decisions.
        self._load: dict[str, float] = {}
        #: Requests sent by affinity, and those that had a match but went by load
        #: (overflows, and ``spread``: those that made one more holder of a prefix).
        self.affine = 0
        self.by_load = 0
        self.spread = 0
        #: New prefixes, placed where the index holds least per unit of speed.
        self.placed = 0

    def choose(
        self,
        ready: Sequence[Upstream],
        key: str | None,
        waiting: int,
        waited_s: float,
        prompt: Sequence[int] | None = None,
    ) -> Choice:
        """The least loaded holder of the prompt's longest prefix within the load guard;
        else one more holder, an overflow by load, or a new prefix's placement."""
        if not prompt:
            return self._capacity.choose(ready, key, waiting, waited_s)
        matched = self.index.match(prompt)
        choice, record = self._choose(ready, matched)
        if choice is None:
            # No room anywhere: the capacity policy says wait (None) or hold (a float).
            return self._capacity.choose(ready, key, waiting, waited_s)
        if record:
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
        """The upstream for a prompt, and whether it now holds the prompt (record it)."""
        # Load is in-flight requests weighted by each upstream's latency: an engine that
        # batches finishes more requests per second the more it runs, so its measured
        # rate rises with its load and ``in_flight / rate`` stays flat as it turns into a
        # hot spot; latency per request does not flatter it. Not measured yet: the mean.
        lat = [self.latency(u) for u in ready]
        known = [x for x in lat if x > 0.0]
        default = sum(known) / len(known) if known else 1.0
        bit = self.index.bit
        longest = max(matched.values()) if matched else 0
        avg = self._load
        total_load = 0
        total_speed = 0.0
        scored: list[tuple[Upstream, float, float, bool]] = []
        best: Upstream | None = None
        best_score = 0.0
        ties = 0
        holder: Upstream | None = None
        holder_score = 0.0
        other: Upstream | None = None  # the least loaded upstream without the prefix
        other_score = 0.0
        holder_ready = False
        rng = self._rng
        for u, x in zip(ready, lat, strict=True):
            x = x or default
            total_load += u.in_flight + 1
            total_speed += 1.0 / x
            score = (u.in_flight + 1) * x
            old = avg.get(u.id)
            avg[u.id] = score if old is None else old + LOAD_ALPHA * (score - old)
            holds = longest > 0 and matched.get(bit(u.id), 0) == longest
            holder_ready = holder_ready or holds
            if not u.has_room():
                continue
            scored.append((u, x, score, holds))
            if best is None or score < best_score:
                best, best_score, ties = u, score, 1
            elif score == best_score:
                ties += 1
                if rng.random() * ties < 1.0:
                    best = u
            if holds:
                if holder is None or score < holder_score:
                    holder, holder_score = u, score
            elif other is None or score < other_score:
                other, other_score = u, score
        # The reference is the fleet's load spread by speed, not the least loaded
        # upstream's: engines that batch finish their requests in bursts, so one of them
        # is often empty for a moment, and measured against that moment a home with an
        # ordinary load looked hot (9% of requests spilled, most of them to an engine
        # without the prompt, whose cold prefills stalled its whole batch:
        # docs/performance.md, "Where the TTFT tail came from").
        mean_lat = len(ready) / total_speed if total_speed else 1.0
        guard = BALANCE * total_load / total_speed + SLACK * mean_lat if total_speed else 0.0
        if holder_ready:
            if holder is not None and holder_score <= guard:
                if other is not None and avg[holder.id] - avg[other.id] > SPREAD * mean_lat:
                    # Every holder has carried more than an upstream without the prefix
                    # for a while (a flooding tenant): that one becomes a holder too, and
                    # from then on takes its share as the least loaded holder.
                    self.by_load += 1
                    self.spread += 1
                    return other, True
                self.affine += 1
                return holder, True
            # A hot spot for the moment: an overflow, not a holder (with two holders a
            # tenant alternates between engines whose caches then both hold it, evicting
            # other tenants: hit rate 0.81 vs 0.93 in docs/performance.md).
            self.by_load += 1
            return best, best is not None and best is holder
        # A new prefix: where the index holds least per unit of speed (as the SGLang
        # gateway places one on the smallest tree), so that no engine's cache holds more
        # than its share; only among upstreams about as little loaded as the least.
        place: Upstream | None = None
        place_key = (0.0, 0.0)
        held = self.index.held
        near = best_score + PLACE_SLACK * mean_lat
        for u, x, score, _ in scored:
            if score > near:
                continue
            k = (held(bit(u.id)) * x, score)
            if place is None or k < place_key:
                place, place_key = u, k
        if place is not None:
            self.placed += 1
            return place, True
        return best, True
