"""``sticky``: a consistent hash of a header picks the upstream (session or cache affinity).

The ring holds every member of the pool, ejected ones included, so a flapping upstream
does not move anybody else's sessions. When the key's owner cannot take the request (not
ready, at its cap, or already tried) or the request has no key, the least-outstanding
upstream takes it.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence

from gpufleet.router.policies.base import Choice, least_loaded
from gpufleet.router.pool import Pool
from gpufleet.router.upstream import Upstream

#: Points per upstream on the ring: enough for an even spread over a handful of upstreams.
VNODES = 160


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Sticky:
    """Consistent hashing on the request's key, least-outstanding as the fallback."""

    name = "sticky"

    def __init__(self, pool: Pool, rng: random.Random | None = None) -> None:
        self._pool = pool
        self._rng = rng or random.Random()
        self._version = -1
        self._points: list[int] = []
        self._owners: list[Upstream] = []

    def _rebuild(self) -> None:
        ring = sorted((_hash(f"{u.url}#{i}"), u) for u in self._pool.members for i in range(VNODES))
        self._points = [p for p, _ in ring]
        self._owners = [u for _, u in ring]
        self._version = self._pool.version

    def owner(self, key: str) -> Upstream | None:
        """The upstream that owns ``key`` on the ring (whatever its state)."""
        if self._version != self._pool.version:
            self._rebuild()
        if not self._points:
            return None
        i = bisect.bisect(self._points, _hash(key)) % len(self._points)
        return self._owners[i]

    def choose(
        self,
        ready: Sequence[Upstream],
        key: str | None,
        waiting: int,
        waited_s: float,
        prompt: Sequence[int] | None = None,
    ) -> Choice:
        """The key's owner when it can take the request, else the least loaded."""
        if key:
            target = self.owner(key)
            if target is not None and target.has_room():
                for u in ready:
                    if u is target:
                        return u
        return least_loaded(ready, self._rng)
