"""Routing policies by their ``--policy`` name."""

from __future__ import annotations

import random

from gpufleet.errors import ConfigError
from gpufleet.router.policies.base import Choice, Policy, least_loaded
from gpufleet.router.policies.capacity import Capacity
from gpufleet.router.policies.least_outstanding import LeastOutstanding
from gpufleet.router.policies.power_of_two import PowerOfTwo
from gpufleet.router.policies.prefix import Prefix
from gpufleet.router.policies.round_robin import RoundRobin
from gpufleet.router.policies.sticky import Sticky
from gpufleet.router.policies.weighted import Weighted
from gpufleet.router.pool import Pool
from gpufleet.router.prefix import PrefixIndex

POLICIES: dict[str, type[Capacity | LeastOutstanding | PowerOfTwo | RoundRobin | Weighted]] = {
    "capacity": Capacity,
    "round-robin": RoundRobin,
    "least-outstanding": LeastOutstanding,
    "power-of-two": PowerOfTwo,
    "weighted": Weighted,
}


def make_policy(
    name: str,
    pool: Pool,
    rng: random.Random | None = None,
    *,
    prefix_cache_bytes: int = 64 << 20,
    prefix_ttl_s: float = 600.0,
) -> Policy:
    """A fresh policy called ``name`` for ``pool`` (each pool keeps its own state).

    Raises:
        ConfigError: no policy has that name.
    """
    if name == "sticky":
        return Sticky(pool, rng)
    if name == "prefix":
        return Prefix(PrefixIndex(prefix_cache_bytes, prefix_ttl_s), rng)
    cls = POLICIES.get(name)
    if cls is None:
        known = ", ".join(["prefix", *POLICIES, "sticky"])
        raise ConfigError(f"unknown policy {name!r}; known: {known}")
    return cls(rng)


__all__ = [
    "POLICIES",
    "Capacity",
    "Choice",
    "LeastOutstanding",
    "Policy",
    "PowerOfTwo",
    "Prefix",
    "RoundRobin",
    "Sticky",
    "Weighted",
    "least_loaded",
    "make_policy",
]
