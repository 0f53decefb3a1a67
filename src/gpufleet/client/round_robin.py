"""Round-robin dispatch, kept for comparison with the pull-based ``Dispatcher``.

The old ``itertools.cycle`` split: item i belongs to endpoint ``i mod n`` and moves on
only when it fails there (to the next reachable endpoint), or when its endpoint is
cooled down. ``gpufleet client --dispatch round-robin`` and the client speed test use it
to show what pulling gains over a static split.
"""

from __future__ import annotations

from gpufleet.client.dispatch import Dispatcher, _Work
from gpufleet.client.endpoints import Endpoint


class RoundRobinDispatcher(Dispatcher):
    """Runs one job's items over ``endpoints``, item i on endpoint ``i mod n``; single use."""

    def _queue(self, works: list[_Work]) -> None:
        n = len(self._eps)
        #: Which endpoint (by index) each item belongs to.
        self._owner = {work: work.index % n for work in works}
        super()._queue(works)

    def _choose(self, ep: Endpoint, now: float) -> tuple[_Work | None, float | None]:
        """The first of ``ep``'s own items that is ready (no straggler check)."""
        wake: float | None = None
        owner = self._owner
        for work in self._pending:
            if owner[work] != ep.index:
                continue
            if work.not_before > now:
                wake = work.not_before - now if wake is None else min(wake, work.not_before - now)
                continue
            return work, None
        return None, wake

    def _cooled(self, ep: Endpoint) -> None:
        """``ep`` was cooled down: its items go to the next reachable endpoint."""
        owner = self._owner
        for work in self._pending:
            if owner[work] == ep.index:
                owner[work] = self._next_reachable(ep.index)

    def _retry_elsewhere(self, work: _Work, ep: Endpoint, now: float, backoff: float) -> None:
        """``work`` failed on ``ep``: it belongs to the next reachable endpoint now."""
        self._owner[work] = self._next_reachable(ep.index)

    def _next_reachable(self, index: int) -> int:
        n = len(self._eps)
        for step in range(1, n + 1):
            if self._eps[(index + step) % n].is_reachable():
                return (index + step) % n
        return (index + 1) % n
