"""``weighted``: smooth weighted round-robin over static weights (nginx's algorithm)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gpufleet.router.policies.base import Choice
from gpufleet.router.upstream import Upstream


class Weighted:
    """Upstreams get requests in proportion to ``--worker URL=WEIGHT``, evenly spread.

    Each pick adds every candidate's weight to its running score, takes the highest, and
    subtracts the total from the winner: weights 5,1,1 give a a b a c a a rather than
    five a's in a row.
    """

    name = "weighted"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._current: dict[str, float] = {}

    def choose(
        self,
        ready: Sequence[Upstream],
        key: str | None,
        waiting: int,
        waited_s: float,
        prompt: Sequence[int] | None = None,
    ) -> Choice:
        """The upstream with room whose smoothed weight is highest."""
        current = self._current
        best: Upstream | None = None
        best_score = 0.0
        total = 0.0
        for u in ready:
            if not u.has_room():
                continue
            score = current.get(u.id, 0.0) + u.weight
            current[u.id] = score
            total += u.weight
            if best is None or score > best_score:
                best, best_score = u, score
        if best is not None:
            current[best.id] = best_score - total
        if len(current) > 4 * len(ready) + 16:
            # Upstreams come and go through the admin API; forget the departed ones.
            alive = {u.id for u in ready}
            self._current = {k: v for k, v in current.items() if k in alive}
        return best
