"""``round-robin``: the ready upstreams in turn, skipping those at their cap."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gpufleet.router.policies.base import Choice
from gpufleet.router.upstream import Upstream


class RoundRobin:
    """Each ready upstream in turn; k·n picks over n upstreams with room give each k."""

    name = "round-robin"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._next = 0

    def choose(
        self,
        ready: Sequence[Upstream],
        key: str | None,
        waiting: int,
        waited_s: float,
        prompt: Sequence[int] | None = None,
    ) -> Choice:
        """The next upstream in turn that has room."""
        n = len(ready)
        start = self._next
        for i in range(n):
            u = ready[(start + i) % n]
            if u.has_room():
                self._next = (start + i + 1) % n
                return u
        return None
