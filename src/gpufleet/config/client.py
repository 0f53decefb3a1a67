"""Settings of a bulk job: ``gpufleet generate`` and ``gpufleet.Client``.

Built at the edge by ``gpufleet.config.load(ClientConfig, "client", ...)``: a flag beats
``GPUFLEET_<FIELD>`` (``GPUFLEET_ENDPOINTS`` is comma-separated), which beats the YAML
file's ``client:`` section, which beats the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpufleet.config._setting import setting
from gpufleet.errors import ConfigError

DispatchMode = Literal["pull", "round-robin"]


#: In-flight requests per endpoint that is not a gpufleet worker or router.
DEFAULT_CONCURRENCY = 2
#: Most in-flight requests an automatically sized endpoint gets.
MAX_AUTO_CONCURRENCY = 512


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How a bulk job spreads its items over endpoints, retries, and writes its outputs."""

    #: Base URLs of workers or routers (``http://host:port``); duplicates are merged.
    endpoints: tuple[str, ...] = setting(
        (),
        help="Worker or router URL (repeat; else GPUFLEET_ENDPOINTS=a,b or endpoints: in YAML).",
        names=("--endpoint", "-e"),
        metavar="URL",
    )
    #: ``/predict`` or an OpenAI-shaped route.
    path: str = setting(
        "/predict", help="Route to POST to: /predict, /v1/images/generations, /v1/embeddings."
    )
    #: None sends no seed.
    seed: int | None = setting(None, help="Item i gets seed+i unless it has its own.")
    #: Requests kept in flight per endpoint (a router URL gets this times its workers).
    #: None (the default): sized from the endpoint's /stats so that batches can fill: a
    #: gpufleet worker gets two batches (2 x its max batch size), a gpufleet router the sum
    #: of its workers' caps, any other server ``DEFAULT_CONCURRENCY``.
    per_endpoint_concurrency: int | None = setting(
        None,
        help="Requests in flight per endpoint (unset: sized from its /stats so batches fill:"
        " 2 batches per gpufleet worker, a router's worker caps summed; 2 for other servers;"
        " a number N: N per endpoint, N per worker for a router).",
    )
    #: Before the item is recorded as failed.
    max_attempts: int = setting(5, help="Attempts per item.")
    #: Also sent as ``X-Request-Timeout``.
    timeout: float = setting(300.0, help="Seconds per request.")
    #: Items left when it passes fail. None: no limit.
    deadline: float | None = setting(None, help="Seconds for the whole job (unset: none).")
    #: ``pull``: every endpoint takes the next item when it has a free slot.
    #: ``round-robin``: item i goes to endpoint i mod n (the old ``itertools.cycle``).
    dispatch: DispatchMode = setting(
        "pull", help="How items go to endpoints: pull (the next free slot) or round-robin."
    )
    #: First retry back-off of an item, doubled per attempt up to ``retry_max_s``.
    retry_base_s: float = 0.2
    retry_max_s: float = 30.0
    #: Consecutive failures after which an endpoint is cooled down and re-probed.
    failure_threshold: int = 3
    #: First cool-down of an endpoint, doubled each time it fails again, up to the max.
    cooldown_base_s: float = 1.0
    cooldown_max_s: float = 60.0
    #: When no endpoint has been usable for this long, the items left fail: a job against
    #: endpoints that never answer ends within about this many seconds.
    unavailable_timeout: float = setting(
        30.0, help="Seconds with no endpoint answering before the items left fail."
    )
    #: ``gpufleet generate`` only.
    output: str = setting(
        "outputs",
        help="Folder for outputs, results.jsonl, summary.json.",
        names=("--output", "-o"),
        metavar="PATH",
    )
    #: Done: recorded in ``results.jsonl``, its file there.
    resume: bool = setting(True, help="Skip items already done in --output.")
    #: Submit the job as a batch the fleet keeps (the router's Batch API at the one
    #: endpoint) and follow it, instead of sending each item from here.
    server_side: bool = setting(
        False,
        help="Submit the job as a batch the fleet keeps (one router --endpoint) and follow it.",
        names=("--server-side",),
    )

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError(f"path must start with '/', got {self.path!r}")
        if self.per_endpoint_concurrency is not None and self.per_endpoint_concurrency < 1:
            raise ConfigError(
                f"per_endpoint_concurrency must be >= 1, got {self.per_endpoint_concurrency}"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.deadline is not None and self.deadline <= 0:
            raise ConfigError(f"deadline must be > 0 seconds, got {self.deadline}")
        if self.dispatch not in ("pull", "round-robin"):
            raise ConfigError(f"dispatch must be 'pull' or 'round-robin', got {self.dispatch!r}")
        if self.retry_base_s < 0 or self.retry_max_s < self.retry_base_s:
            raise ConfigError("retry_base_s must be >= 0 and retry_max_s >= retry_base_s")
        if self.failure_threshold < 1:
            raise ConfigError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if self.cooldown_base_s < 0 or self.cooldown_max_s < self.cooldown_base_s:
            raise ConfigError("cooldown_base_s must be >= 0 and cooldown_max_s >= cooldown_base_s")
        if self.unavailable_timeout <= 0:
            raise ConfigError(
                f"unavailable_timeout must be > 0 seconds, got {self.unavailable_timeout}"
            )
        for url in self.endpoints:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"endpoint {url!r} must start with http:// or https://")
