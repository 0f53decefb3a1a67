"""Settings of the router process (flags, ``GPUFLEET_*`` env, YAML ``router:``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Literal

from gpufleet.config._load import LogLevel
from gpufleet.config._setting import setting
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

    workers: tuple[str, ...] = setting(
        (),
        help="Upstream [POOL@]URL[=WEIGHT] (repeat).",
        names=("--worker", "-w"),
        metavar="URL",
    )
    routes: tuple[str, ...] = setting(
        (),
        help="PREFIX=POOL: paths under PREFIX go to POOL, prefix stripped.",
        metavar="PREFIX=POOL",
    )
    #: ``capacity``: shortest expected wait from each upstream's measured rate.
    policy: PolicyName = setting(
        "prefix", help="Routing policy (prefix: by prompt prefix for LLM bodies, else as capacity)."
    )
    #: LRU past it.
    prefix_cache_mb: float = setting(64.0, help="Memory bound of each pool's prompt-prefix index.")
    #: Engines evict old prefixes too.
    prefix_ttl_s: float = setting(600.0, help="Forget prefixes unused this long.")
    host: str = setting("127.0.0.1", help="Address to bind.")
    port: int = setting(8000, help="Port to bind; 0 picks a free one.")
    #: Bound elsewhere than loopback, the only names served (empty: any). Also the
    #: browser origins that may send non-GET requests.
    allowed_hosts: tuple[str, ...] = setting(
        (),
        help="Host name served besides loopback ones (repeat; bound to a non-loopback"
        " address: the only names served, unset: any; * any, *.x.com subdomains).",
    )
    port_file: str | None = setting(None, help="Write the bound port here once listening.")
    #: One batch running, the next one queued; engines: see router/engines.py.
    max_outstanding: int = setting(
        0,
        help="Cap per upstream; 0: learned (a gpufleet worker: 2 x its batch size; SGLang,"
        " TGI: their stated limit; vLLM: from its /metrics; others: adaptive from latency).",
    )
    max_queue: int = setting(
        1024, help="Requests that may wait when all upstreams are at their cap."
    )
    queue_timeout_s: float = setting(30.0, help="Longest wait in the admission queue.")
    timeout_s: float = setting(300.0, help="Deadline of a request, all attempts included.")
    connect_timeout_s: float = setting(2.0, help="Connect timeout per attempt.")
    #: Learned: 10 x the upstream's p99 time to first byte, at least 1 s; the deadline
    #: until 20 answers.
    first_byte_timeout_s: float = setting(
        0.0,
        help="Longest wait for an attempt's answer to begin; 0: learned per upstream"
        " (10 x its p99, at least 1 s).",
    )
    #: SSE: an error event ends it.
    stream_idle_timeout_s: float = setting(60.0, help="Cut a streamed answer silent this long.")
    #: Its upstream slot is freed.
    client_write_timeout_s: float = setting(
        30.0, help="Drop a client that accepts no answer bytes this long."
    )
    #: Each retry is drawn from the retry budget.
    retries: int = setting(2, help="Attempts after the first, on other upstreams.")
    #: Sent and lost: the connection closed, no answer.
    retry_lost: bool = setting(
        False,
        help="Also retry requests lost after sending on non-idempotent methods of servers"
        " other than gpufleet workers.",
    )
    retry_budget_percent: float = setting(
        20.0, help="Retries as a % of requests over 10 s, at most.", names=("--retry-budget",)
    )
    retry_budget_min: int = setting(3, help="Retries always allowed concurrently.")
    health_interval_s: float = setting(1.0, help="Seconds between probes.")
    health_timeout_s: float = setting(1.0, help="Probe timeout.")
    health_path: str = setting("/health", help="Probe path.")
    eject_after: int = setting(3, help="Consecutive failed probes that eject.")
    readmit_after: int = setting(2, help="Consecutive good probes that re-admit.")
    max_fails: int = setting(3, help="Passive: failures within --fail-timeout that eject.")
    fail_timeout_s: float = setting(10.0, help="Passive: failure window and ejection time.")
    max_ejection_percent: float = setting(
        50.0,
        help="Passive: most of a pool ejected at once, % (at least one; never the last ready"
        " for a 5xx the upstream does not call its own).",
    )
    sticky_header: str = setting("X-Session-Id", help="Header the sticky policy hashes.")
    admin_token: str | None = setting(
        None,
        help="Bearer token of /admin; visible to every local user in ps: prefer"
        " GPUFLEET_ADMIN_TOKEN or --admin-token-file; unset: admin API off.",
    )
    #: Then the main endpoint answers every /admin path 404.
    admin_port: int | None = setting(
        None,
        help="Serve /admin on a listener of its own on this port (the endpoint then answers"
        " /admin 404); unset: on the endpoint.",
    )
    admin_host: str = setting("127.0.0.1", help="Address of the admin listener.")
    #: Read once at start: unlike ``--admin-token``, it never shows in process arguments.
    admin_token_file: str | None = setting(
        None, help="File whose first line is the /admin Bearer token."
    )
    #: Never link-local, metadata, multicast, unspecified. ``--worker`` URLs are the
    #: operator's own and not limited. ``gpufleet up`` gives its router the private
    #: ranges its nodes live in.
    allowed_upstreams: tuple[str, ...] = setting(
        (),
        help="CIDR that admin-added upstreams may resolve into besides loopback (repeat);"
        " unset: loopback only.",
        names=("--allow-upstream",),
        metavar="CIDR",
    )
    #: For an engine started with ``--api-key``.
    forward_auth: bool = setting(
        False,
        help="Pass clients' Authorization and Cookie headers on to upstreams (an engine"
        " with --api-key); off: they stay at the router.",
    )
    max_body_mb: float = setting(32.0, help="Largest request body.")
    max_header_kb: int = setting(16, help="Largest header line.")
    drain_timeout_s: float = setting(30.0, help="How long SIGTERM waits for in-flight work.")
    log_level: LogLevel = setting("info", help="How much to log.")
    #: ``X-Gpufleet-Priority: batch`` and the Batch API's own requests.
    batch_share_percent: float = setting(
        75.0,
        help="Most of each upstream's cap batch-class requests may hold, % (at least one"
        " slot; the rest stays free for interactive bursts).",
        names=("--batch-share",),
    )
    #: SQLite ``batches.sqlite3`` + ``files/``, or a PostgreSQL database
    #: (``postgresql://…``, the ``postgres`` extra). ``gpufleet up`` sets
    #: ``<run_dir>/batches``.
    batch_store: str | None = setting(
        None,
        help="The Batch API's store: a directory (SQLite + files) or a postgresql:// URL;"
        " unset: no Batch API (/v1/files and /v1/batches are proxied).",
        metavar="PATH|URL",
    )
    batch_max_file_mb: float = setting(200.0, help="Largest batch input file.")
    batch_max_lines: int = setting(50_000, help="Most requests in one batch.")
    #: Uploads past it: 413.
    batch_max_store_gb: float = setting(20.0, help="Most bytes of files the store keeps.")
    #: Inputs of unfinished batches are kept.
    batch_retention_h: float = setting(
        720.0, help="Delete files and finished batches older than this."
    )
    #: The window follows the fleet's free batch capacity up to this.
    batch_max_in_flight: int = setting(512, help="Most batch requests in flight per pool.")

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
            raise ConfigError("batch_store must be a directory path or a postgresql:// URL")
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
