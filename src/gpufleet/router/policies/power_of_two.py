"""``power-of-two``: two upstreams at random, the less loaded wins (Mitzenmacher)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gpufleet.router.policies.base import Choice
from gpufleet.router.upstream import Upstream


class PowerOfTwo:
    """Sample two distinct upstreams with room; keep the one with fewer in flight."""

    name = "power-of-two"

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
        """The less loaded of two random upstreams that have room."""
        room = [u for u in ready if u.has_room()]
        n = len(room)
        if n <= 1:
            return room[0] if room else None
        rng = self._rng
        i = int(rng.random() * n)
        j = int(rng.random() * (n - 1))
        if j >= i:
            j += 1
        a, b = room[i], room[j]
        if a.in_flight == b.in_flight:
            return a if rng.random() < 0.5 else b
        return a if a.in_flight < b.in_flight else b
