"""Settings of the router process (flags, ``GPUFLEET_*`` env, YAML ``router:``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Literal

from gpufleet.config._load import LogLevel
from gpufleet.errors import ConfigError

PolicyName = Literal[
    "prefix", "capacity", "round-robin", "least-outstanding", "power-of-two", "weighted", "sticky"
]
POLICY_NAMES: tuple[str, ...] = (
    "prefix",
    "capacity",
    "round-robin",
    "least-outstanding",
    "power-of-two",
    "weighted",
    "sticky",
)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything ``gpufleet router`` takes.

    ``workers`` items are ``URL[=WEIGHT]`` or ``POOL@URL[=WEIGHT]``; ``routes`` items are
    ``PREFIX=POOL`` (see ``gpufleet.router.pool.parse_worker`` and ``parse_route``).
    """

    workers: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    #: ``prefix``: by prompt prefix for LLM bodies (the engines' KV caches), else as
    #: ``capacity`` (shortest expected wait from each upstream's measured rate).
    policy: PolicyName = "prefix"
    #: Memory bound of each pool's prompt-prefix index (LRU past it).
    prefix_cache_mb: float = 64.0
    #: Prefix index entries unused this long are dropped (engines evict old prefixes).
    prefix_ttl_s: float = 600.0
    host: str = "127.0.0.1"
    port: int = 8000
    #: Host names served besides loopback ones when bound to loopback (DNS rebinding);
    #: bound elsewhere, the only names served (empty: any). ``*`` any, ``*.x.com``
    #: subdomains. Also the browser origins that may send non-GET requests.
    allowed_hosts: tuple[str, ...] = ()
    port_file: str | None = None
    #: Cap of outstanding requests per upstream; 0: twice a gpufleet worker's batch size
    #: (one batch running, the next one queued), else 4.
    max_outstanding: int = 0
    #: Requests that may wait at the router when every upstream is at its cap.
    max_queue: int = 1024
    queue_timeout_s: float = 30.0
    #: One deadline for a request, all attempts and its whole answer included.
    timeout_s: float = 300.0
    connect_timeout_s: float = 2.0
    #: How long one attempt waits for its answer to begin; 0: learned per upstream
    #: (10 x its p99 time to first byte, at least 1 s; the deadline until 20 answers).
    first_byte_timeout_s: float = 0.0
    #: A streamed answer that sends nothing for this long is cut (SSE: an error event).
    stream_idle_timeout_s: float = 60.0
    #: A client that takes longer than this to accept one write of an answer is dropped,
    #: and its upstream slot freed.
    client_write_timeout_s: float = 30.0
    #: Attempts after the first, on other upstreams (each drawn from the retry budget).
    retries: int = 2
    #: Retry requests that were sent and lost (the connection closed, no answer) also for
    #: non-idempotent methods on servers other than gpufleet workers.
    retry_lost: bool = False
    #: Retries may be at most this percentage of requests over 10 s ...
    retry_budget_percent: float = 20.0
    #: ... except while fewer than this many retries are under way.
    retry_budget_min: int = 3
    health_interval_s: float = 1.0
    health_timeout_s: float = 1.0
    health_path: str = "/health"
    #: Consecutive failed probes that eject, and good ones that re-admit.
    eject_after: int = 3
    readmit_after: int = 2
    #: Passive ejection: this many failures within fail_timeout_s eject for fail_timeout_s.
    max_fails: int = 3
    fail_timeout_s: float = 10.0
    #: Passive ejection takes at most this share of a pool at once (always at least one
    #: upstream, never the last ready one for a 5xx that may have come from the request).
    max_ejection_percent: float = 50.0
    sticky_header: str = "X-Session-Id"
    admin_token: str | None = None
    #: Serve the admin API on a listener of its own at ``admin_host:admin_port`` (then
    #: the main endpoint answers every /admin path 404); unset: on the main endpoint.
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    #: A file holding the admin token (first line), read once at start: unlike
    #: ``--admin-token``, it never shows in process arguments.
    admin_token_file: str | None = None
    #: Networks (CIDR) that upstreams added through the admin API may resolve into besides
    #: loopback (never link-local, metadata, multicast, unspecified); empty: loopback only.
    #: ``--worker`` URLs are the operator's own and not limited. ``gpufleet up`` gives its
    #: router the private ranges its nodes live in.
    allowed_upstreams: tuple[str, ...] = ()
    #: Pass the client's ``Authorization`` and ``Cookie`` on to upstreams (an engine
    #: started with ``--api-key``); off: they stay at the router.
    forward_auth: bool = False
    max_body_mb: float = 32.0
    max_header_kb: int = 16
    drain_timeout_s: float = 30.0
    log_level: LogLevel = "info"
    #: Share of each upstream's cap that ``batch``-class requests may hold (at least one
    #: slot): ``X-Gpufleet-Priority: batch`` and the Batch API's own requests. The rest
    #: of the cap stays free for interactive bursts.
    batch_share_percent: float = 75.0
    #: The Batch API's store: a directory (SQLite ``batches.sqlite3`` + ``files/``).
    #: Unset: a standalone router has no Batch API (``/v1/files`` and ``/v1/batches`` are
    #: proxied like any path); ``gpufleet up`` sets ``<run_dir>/batches``.
    batch_store: str | None = None
    #: Largest uploaded batch input file.
    batch_max_file_mb: float = 200.0
    #: Most requests (lines) in one batch input file.
    batch_max_lines: int = 50_000
    #: Files kept (inputs and outputs) may hold at most this much; uploads past it: 413.
    batch_max_store_gb: float = 20.0
    #: Files and finished batches older than this are deleted (inputs of unfinished
    #: batches are kept).
    batch_retention_h: float = 720.0
    #: Most batch requests the Batch API keeps in flight at once (its window follows
    #: the fleet's free batch capacity up to this).
    batch_max_in_flight: int = 512

    def __post_init__(self) -> None:
        if self.admin_port is not None and not 1 <= self.admin_port <= 65535:
            raise ConfigError(f"admin_port must be in 1..65535, got {self.admin_port}")
        if self.admin_port is not None and self.admin_port == self.port:
            raise ConfigError("admin_port must differ from port")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"policy must be one of {', '.join(POLICY_NAMES)}")
        for name in ("max_outstanding", "retries", "retry_budget_min"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "max_queue",
            "eject_after",
            "readmit_after",
            "max_fails",
            "max_header_kb",
            "batch_max_lines",
            "batch_max_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "queue_timeout_s",
            "timeout_s",
            "connect_timeout_s",
            "health_interval_s",
            "health_timeout_s",
            "fail_timeout_s",
            "max_body_mb",
            "stream_idle_timeout_s",
            "client_write_timeout_s",
            "prefix_cache_mb",
            "prefix_ttl_s",
            "batch_max_file_mb",
            "batch_max_store_gb",
            "batch_retention_h",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.first_byte_timeout_s < 0:
            raise ConfigError(
                f"first_byte_timeout_s must be >= 0 (0: learned), got {self.first_byte_timeout_s}"
            )
        if not 0 <= self.max_ejection_percent <= 100:
            raise ConfigError(
                f"max_ejection_percent must be in 0..100, got {self.max_ejection_percent}"
            )
        if not 0 <= self.retry_budget_percent <= 100:
            raise ConfigError(
                f"retry_budget_percent must be in 0..100, got {self.retry_budget_percent}"
            )
        if self.drain_timeout_s < 0:
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if not self.health_path.startswith("/"):
            raise ConfigError(f"health_path must start with '/', got {self.health_path!r}")
        for cidr in self.allowed_upstreams:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"allowed_upstreams: not a network (CIDR): {cidr!r}") from None
        if not 0 < self.batch_share_percent <= 100:
            raise ConfigError(
                f"batch_share_percent must be in (0, 100], got {self.batch_share_percent}"
            )
        if self.batch_store is not None and not self.batch_store.strip():
            raise ConfigError("batch_store must be a directory path")
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ConfigError("give admin_token or admin_token_file, not both")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ConfigError("admin_token must be at least 8 characters")

    def with_token_file(self) -> RouterConfig:
        """These settings with ``admin_token`` read from ``admin_token_file`` (if one is set).

        Raises:
            ConfigError: the file cannot be read, or its token is shorter than 8 characters.
        """
        if self.admin_token_file is None:
            return self
        try:
            with open(self.admin_token_file, encoding="utf-8") as f:
                token = f.readline(4096).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read admin_token_file: {exc}") from None
        return replace(self, admin_token=token, admin_token_file=None)

    @property
    def max_body_bytes(self) -> int:
        """The request body limit in bytes."""
        return int(self.max_body_mb * 1024 * 1024)
