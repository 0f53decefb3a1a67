"""Settings of the operating tools: ``gpufleet bench`` and ``gpufleet monitor``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpufleet.config._setting import setting
from gpufleet.errors import ConfigError

#: Hard ceilings: a bench run is always bounded in count and in time.
MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 3600.0


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What ``gpufleet bench URL`` sends, how hard, and where it writes the results."""

    #: ``gpufleet bench URL`` (an argument, not a flag).
    url: str = "http://127.0.0.1:8000"
    #: ``/predict``, ``/v1/embeddings``, …
    path: str = setting("/predict", help="Path the requests go to.")
    #: None: a body that fits the kind of server.
    payload_file: str | None = setting(
        None,
        help="JSON (one body) or JSONL (bodies in turn) file.",
        names=("--payload",),
        metavar="PATH",
    )
    concurrency: int = setting(8, help="Closed loop: requests in flight.")
    requests: int = setting(200, help="Closed loop: requests to send.")
    #: 0: closed loop.
    rate: float = setting(0.0, help="Open loop: requests per second.")
    duration_s: float = setting(10.0, help="Open loop: seconds to send.")
    arrival: Literal["poisson", "uniform"] = setting("poisson", help="Open loop: arrivals.")
    #: Counted as not sent.
    max_in_flight: int = setting(
        1024, help="Open loop: arrivals past this many in flight are dropped."
    )
    #: The seed set-ups' burst test.
    burst: int = setting(0, help="Send N requests at once, once.")
    #: Drains the other workers.
    scaling: bool = setting(
        False, help="Same load with 1..N workers (drains).", names=("--scaling",)
    )
    #: Needed by ``--scaling``.
    admin_token: str | None = setting(None, help="Router admin token (or GPUFLEET_ADMIN_TOKEN).")
    timeout_s: float = setting(60.0, help="Seconds one request may take.")
    #: Every step included.
    max_duration_s: float = setting(600.0, help="Seconds the whole run may take.")
    #: Warms caches and connections.
    warmup: int = setting(0, help="Unmeasured requests sent first.")
    report: str | None = setting(None, help="Write a self-contained HTML report.", metavar="PATH")
    #: Instead of tables.
    json: bool = setting(False, help="Print the results as JSON.", names=("--json",))
    seed: int = setting(0, help="Seed of the open loop's arrivals.")

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

    #: ``gpufleet monitor [URL]`` (an argument, not a flag).
    url: str = "http://127.0.0.1:8000"
    interval_s: float = setting(1.0, help="Seconds between polls.")
    once: bool = setting(False, help="Print one snapshot and exit.", names=("--once",))
    errors: bool = setting(False, help="List the recent errors per worker.", names=("--errors",))
    #: Budget of one poll.
    timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url must start with http:// or https://, got {self.url!r}")
        if not 0.1 <= self.interval_s <= 3600:
            raise ConfigError(f"interval_s must be in 0.1..3600, got {self.interval_s}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
