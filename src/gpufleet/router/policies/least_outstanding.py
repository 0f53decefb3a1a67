"""``least-outstanding``: the upstream with the fewest requests in flight (nginx least_conn)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gpufleet.router.policies.base import Choice, least_loaded
from gpufleet.router.upstream import Upstream


class LeastOutstanding:
    """Fewest router-counted in-flight requests wins; ties at random."""

    name = "least-outstanding"

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
        """The least-loaded upstream with room."""
        return least_loaded(ready, self._rng)
