"""The ``Policy`` seam: pick an upstream for one request among the ready ones.

A policy sees the pool's ready upstreams (already without those a retry must avoid) and
answers one of three things:

- an ``Upstream`` with room under its cap: dispatch there now;
- ``None``: nothing can take the request now; it waits for a slot in the FIFO;
- a ``float``: hold the request although some upstream has room (the capacity policy
  does this when a much faster upstream frees up sooner); ask again within that many
  seconds.

Policies are called on the hot path: no allocation they can avoid, no awaits. Ties are
broken with the policy's own ``random.Random`` so a seed gives the same choices.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from gpufleet.router.upstream import Upstream

Choice = Upstream | float | None


class Policy(Protocol):
    """Chooses where one request goes."""

    name: str

    def choose(
        self,
        ready: Sequence[Upstream],
        key: str | None,
        waiting: int,
        waited_s: float,
        prompt: Sequence[int] | None = None,
    ) -> Choice:
        """Pick for one request.

        Args:
            ready: upstreams in state ``ready`` (never empty).
            key: the request's affinity key (the sticky header), if any.
            waiting: requests waiting in the pool's queue, this one included.
            waited_s: how long this request has waited so far.
            prompt: the chained block keys of the request's prompt, for policies that
                say ``uses_prompt = True`` (see ``router.prefix``); else None.
        """
        ...


def least_loaded(ready: Sequence[Upstream], rng: random.Random) -> Upstream | None:
    """The upstream with room and the fewest in flight; ties at random."""
    best: Upstream | None = None
    best_load = 1 << 60
    ties = 0
    for u in ready:
        load = u.in_flight
        if not u.has_room():
            continue
        if load < best_load:
            best, best_load, ties = u, load, 1
        elif load == best_load:
            # Reservoir sampling over the tied ones: each wins with equal chance.
            ties += 1
            if rng.random() * ties < 1.0:
                best = u
    return best
