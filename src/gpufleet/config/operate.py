"""Settings of the operating tools: ``gpufleet bench`` and ``gpufleet monitor``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpufleet.errors import ConfigError

#: Hard ceilings: a bench run is always bounded in count and in time.
MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 3600.0


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What ``gpufleet bench URL`` sends, how hard, and where it writes the results."""

    url: str = "http://127.0.0.1:8000"
    #: Path the load goes to (``/predict``, ``/v1/embeddings``, …).
    path: str = "/predict"
    #: A JSON file (one body) or a JSONL file (bodies used in turn); None: fits the kind.
    payload_file: str | None = None
    #: Closed loop: this many requests in flight at all times …
    concurrency: int = 8
    #: … until this many were sent.
    requests: int = 200
    #: Open loop: requests per second (0 = closed loop) …
    rate: float = 0.0
    #: … for this many seconds.
    duration_s: float = 10.0
    #: Arrival process of the open loop.
    arrival: Literal["poisson", "uniform"] = "poisson"
    #: Open loop: requests beyond this many in flight are counted as not sent.
    max_in_flight: int = 1024
    #: ``--burst N``: send N requests at once, once (the seed set-ups' burst test).
    burst: int = 0
    #: ``--scaling``: the same load with 1, 2, … N workers (drains the others).
    scaling: bool = False
    #: Bearer token of the router's admin API (needed by ``--scaling``).
    admin_token: str | None = None
    #: Budget of one request.
    timeout_s: float = 60.0
    #: Whole run, every step included, stops after this many seconds.
    max_duration_s: float = 600.0
    #: Requests sent and discarded before measuring (warms caches and connections).
    warmup: int = 0
    #: Where to write the self-contained HTML report.
    report: str | None = None
    #: Print the results as JSON instead of tables.
    json: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {self.url!r}")
        if not self.path.startswith("/"):
            raise ConfigError(f"path must start with '/', got {self.path!r}")
        if not 1 <= self.concurrency <= 10_000:
            raise ConfigError(f"concurrency must be in 1..10000, got {self.concurrency}")
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise ConfigError(f"requests must be in 1..{MAX_REQUESTS}, got {self.requests}")
        if self.rate < 0 or self.rate * self.duration_s > MAX_REQUESTS:
            raise ConfigError(f"rate × duration must stay within {MAX_REQUESTS} requests")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ConfigError(f"duration_s must be in (0, {MAX_DURATION_S:.0f}]")
        if not 0 < self.max_duration_s <= MAX_DURATION_S:
            raise ConfigError(f"max_duration_s must be in (0, {MAX_DURATION_S:.0f}]")
        if not 0 <= self.burst <= 100_000:
            raise ConfigError(f"burst must be in 0..100000, got {self.burst}")
        if self.max_in_flight < 1 or self.timeout_s <= 0 or self.warmup < 0:
            raise ConfigError("max_in_flight must be >= 1, timeout_s > 0 and warmup >= 0")
        if self.scaling and not self.admin_token:
            raise ConfigError(
                "--scaling drains workers through the admin API: give --admin-token "
                "(a fleet started by `gpufleet up` keeps it in .gpufleet/admin-token)"
            )

    @property
    def mode(self) -> str:
        """``burst``, ``open`` or ``closed``."""
        if self.burst:
            return "burst"
        return "open" if self.rate > 0 else "closed"


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """What ``gpufleet monitor`` watches and how often."""

    url: str = "http://127.0.0.1:8000"
    #: Seconds between two polls of /stats.
    interval_s: float = 1.0
    #: Print one snapshot and exit.
    once: bool = False
    #: Also list the recent errors of every worker.
    errors: bool = False
    #: Budget of one poll.
    timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {self.url!r}")
        if not 0.1 <= self.interval_s <= 3600:
            raise ConfigError(f"interval_s must be in 0.1..3600, got {self.interval_s}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
