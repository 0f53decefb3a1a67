"""The upstream set: named pools, path routes, and every state change of an upstream.

``--worker URL[=WEIGHT]`` joins the ``default`` pool, ``--worker POOL@URL[=WEIGHT]`` a
named one; ``--route PREFIX=POOL`` sends paths under PREFIX (prefix stripped, longest
prefix wins) to POOL. All state changes go through ``Registry.set_state`` so each pool's
list of ready upstreams stays current and waiting requests are woken.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from yarl import URL

from gpufleet.errors import ConfigError
from gpufleet.router.upstream import EJECTED, READY, REMOVED, STARTING, Upstream

DEFAULT_POOL = "default"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One parsed ``--worker`` value."""

    url: str
    pool: str = DEFAULT_POOL
    weight: float = 1.0


#: Addresses that are never a model server: cloud metadata services not in a link-local
#: range (AWS's IPv6 one, Alibaba's).
_METADATA = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` can never be an upstream (metadata, link-local, multicast …), or None."""
    if ip.is_loopback:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address (write the IPv4 address)"
    if ip.is_link_local or ip in _METADATA:
        return "a link-local or cloud metadata address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    return None


def _host_problem(host: str) -> str | None:
    """Why ``host`` (IDNA-encoded, IPv6 without brackets) is not a sane upstream host."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address_problem(ip)
    with contextlib.suppress(OSError):
        socket.inet_aton(host)  # 2130706433, 0x7f.1, 127.1, 0177.0.0.1: all 127.0.0.1
        return "an IPv4 address in an obscure form (write it as four decimal numbers)"
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "not a valid host name"
    if labels[-1].isdigit():
        return "not a valid host name (its last label is a number)"
    return None


def check_url(url: str) -> str:
    """Return ``url`` without a trailing slash, or raise ConfigError unless http(s)://host.

    The host must be a host name or a plain IP address, and never one that cannot be a
    model server (``address_problem``: cloud metadata, link-local, multicast, …).
    """
    if any(c <= " " or c == "\x7f" for c in url):
        raise ConfigError(f"upstream URL must not hold spaces or control characters: {url!r}")
    try:
        parsed = URL(url)
        host = parsed.raw_host
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ConfigError(f"not a URL: {url!r}") from exc
    if parsed.scheme not in ("http", "https") or not host:
        raise ConfigError(f"upstream URL must be http(s)://host[:port], got {url!r}")
    if parsed.query_string or parsed.fragment or parsed.user or parsed.password is not None:
        raise ConfigError(f"upstream URL must not carry a query, fragment or user: {url!r}")
    if parsed.explicit_port == 0:
        raise ConfigError(f"upstream URL must not have port 0: {url!r}")
    problem = _host_problem(host.split("%", 1)[0])
    if problem is not None:
        raise ConfigError(f"upstream URL host {host!r} is {problem}: {url!r}")
    return url.rstrip("/")


def parse_weight(text: str) -> float:
    """Read a weight (> 0)."""
    try:
        weight = float(text)
    except ValueError as exc:
        raise ConfigError(f"weight must be a number, got {text!r}") from exc
    if not weight > 0 or weight > 1e6:
        raise ConfigError(f"weight must be in (0, 1e6], got {text!r}")
    return weight


def parse_worker(text: str) -> WorkerSpec:
    """Parse ``[POOL@]URL[=WEIGHT]``."""
    pool = DEFAULT_POOL
    head, sep, weight_text = text.rpartition("=")
    if not sep:
        head = text
    weight = parse_weight(weight_text) if sep else 1.0
    if "@" in head.split("://", 1)[0]:
        pool, _, head = head.partition("@")
        if not pool:
            raise ConfigError(f"empty pool name in {text!r}")
    return WorkerSpec(check_url(head), pool, weight)


def parse_route(text: str) -> tuple[str, str]:
    """Parse ``PREFIX=POOL`` into a normalised prefix (leading, no trailing slash) and pool."""
    prefix, sep, pool = text.partition("=")
    if not sep or not prefix.startswith("/") or not pool:
        raise ConfigError(f"--route takes PREFIX=POOL with PREFIX starting with '/', got {text!r}")
    return prefix.rstrip("/") or "/", pool


class Pool:
    """The upstreams of one pool and the cached list of those ready for new requests."""

    __slots__ = ("members", "name", "ready", "version")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[Upstream] = []
        self.ready: list[Upstream] = []
        #: Bumped on membership changes (the sticky policy rebuilds its ring on change).
        self.version = 0

    def refresh(self) -> None:
        """Rebuild ``ready`` after a state or membership change."""
        self.ready = [u for u in self.members if u.state == READY]


class Registry:
    """Every pool, every upstream by id, and the route table."""

    def __init__(
        self,
        *,
        max_outstanding: int = 0,
        first_byte_timeout_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pools: dict[str, Pool] = {DEFAULT_POOL: Pool(DEFAULT_POOL)}
        self.by_id: dict[str, Upstream] = {}
        #: (prefix, pool) longest prefix first.
        self.routes: list[tuple[str, str]] = []
        self._max_outstanding = max_outstanding
        self._first_byte_timeout_s = first_byte_timeout_s
        self._clock = clock
        self._next_id = 0
        #: Called with the pool after any change that may let a waiting request go.
        self.on_change: Callable[[Pool], None] = lambda pool: None

    def pool(self, name: str) -> Pool:
        """The pool called ``name`` (created empty on first use)."""
        found = self.pools.get(name)
        if found is None:
            found = self.pools[name] = Pool(name)
        return found

    def add_route(self, prefix: str, pool: str) -> None:
        """Send paths under ``prefix`` to ``pool``."""
        self.pool(pool)
        self.routes = sorted([*self.routes, (prefix, pool)], key=lambda r: -len(r[0]))

    def resolve(self, path: str) -> tuple[Pool, str]:
        """The pool that serves ``path`` and the path to send upstream."""
        for prefix, pool in self.routes:
            if path.startswith(prefix) and (
                len(path) == len(prefix) or path[len(prefix)] == "/" or prefix == "/"
            ):
                rest = path[len(prefix) :] if prefix != "/" else path
                return self.pools[pool], rest if rest.startswith("/") else "/" + rest
        return self.pools[DEFAULT_POOL], path

    def find(self, url: str, pool: str) -> Upstream | None:
        """The upstream of ``pool`` at ``url``, if any."""
        url = url.rstrip("/")
        return next((u for u in self.pool(pool).members if u.url == url), None)

    def add(self, spec: WorkerSpec) -> Upstream:
        """Add an upstream in state ``starting`` (it takes traffic after a good probe)."""
        upstream = Upstream(
            f"w{self._next_id}",
            spec.url,
            pool=spec.pool,
            weight=spec.weight,
            max_outstanding=self._max_outstanding,
            first_byte_timeout_s=self._first_byte_timeout_s,
            clock=self._clock,
        )
        self._next_id += 1
        pool = self.pool(spec.pool)
        pool.members.append(upstream)
        pool.version += 1
        self.by_id[upstream.id] = upstream
        return upstream

    def remove(self, upstream: Upstream) -> None:
        """Take ``upstream`` out for good; its in-flight requests still finish."""
        pool = self.pools[upstream.pool]
        if upstream in pool.members:
            pool.members.remove(upstream)
            pool.version += 1
        self.by_id.pop(upstream.id, None)
        self.set_state(upstream, REMOVED)

    def set_state(self, upstream: Upstream, state: str) -> None:
        """Move ``upstream`` to ``state`` and wake whatever may now proceed."""
        if upstream.state == state:
            return
        if state == EJECTED:
            upstream.ejections += 1
        upstream.state = state
        upstream.consecutive_oks = 0
        upstream.consecutive_fails = 0
        pool = self.pools.get(upstream.pool)
        if pool is not None:
            pool.refresh()
            self.on_change(pool)

    def all(self) -> list[Upstream]:
        """Every upstream, pool by pool."""
        return [u for p in self.pools.values() for u in p.members]

    def is_ready(self) -> bool:
        """True when at least one upstream of any pool is ready."""
        return any(p.ready for p in self.pools.values())


__all__ = [
    "DEFAULT_POOL",
    "EJECTED",
    "READY",
    "STARTING",
    "Pool",
    "Registry",
    "WorkerSpec",
    "address_problem",
    "check_url",
    "parse_route",
    "parse_weight",
    "parse_worker",
]
