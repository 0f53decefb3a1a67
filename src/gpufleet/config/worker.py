"""Settings of one worker process and of its dynamic batcher."""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.config._load import LogLevel
from gpufleet.config._setting import setting
from gpufleet.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """How the dynamic batcher fills a batch and how much it may queue."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1, got {self.max_queue}")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything ``gpufleet worker`` takes (flags, ``GPUFLEET_*`` env, YAML ``worker:``)."""

    model: str = setting(
        "minilm",
        help="Model to serve: minilm | synthetic | image-demo | pkg.module:Class | file.py:Class.",
        names=("--model", "-m"),
        metavar="MODEL",
    )
    model_args: dict[str, str] = setting(
        factory=dict, help="key=value passed to the model class (repeat).", metavar="KEY=VALUE"
    )
    #: ``auto`` picks ``cuda`` when torch sees a GPU, else ``cpu``.
    device: str = setting("auto", help="auto | cpu | cuda | cuda:N.")
    host: str = setting("127.0.0.1", help="Address to bind.")
    port: int = setting(8000, help="Port to bind; 0 picks a free one.")
    #: Bound elsewhere than loopback, the only names served (empty: any). Also the
    #: browser origins that may send non-GET requests.
    allowed_hosts: tuple[str, ...] = setting(
        (),
        help="Host name served besides loopback ones (repeat; bound to a non-loopback"
        " address: the only names served, unset: any; * any, *.x.com subdomains).",
    )
    #: Useful with ``--port 0``.
    port_file: str | None = setting(None, help="Write the bound port here once listening.")
    max_batch_size: int = setting(0, help="Largest batch; 0: the model's own, else 32.")
    max_wait_ms: float = setting(5.0, help="Longest wait after a batch's first item.")
    max_queue: int = setting(1024, help="Queued items before answering 503.")
    max_body_mb: float = setting(32.0, help="Largest request body.")
    drain_timeout_s: float = setting(
        30.0,
        help="Seconds SIGTERM waits for in-flight work.",
        names=("--drain-timeout", "--drain-timeout-s"),
    )
    request_timeout_s: float = setting(
        600.0,
        help="Budget of a request that sends no deadline header.",
        names=("--request-timeout", "--request-timeout-s"),
    )
    #: Costs extra predict calls on failures only.
    isolate_failures: bool = setting(
        True, help="Halve a failed batch until the bad items stand alone."
    )
    #: While work waits or runs: ``/health`` answers 503 ``stalled``, new requests 503,
    #: and ``gpufleet up`` restarts the worker.
    stall_timeout_s: float = setting(
        60.0,
        help="Seconds the device may go without finishing a batch while work waits before"
        " /health turns 503 'stalled' (a wedged GPU); above your longest batch; 0: off.",
        names=("--stall-timeout", "--stall-timeout-s"),
    )
    log_level: LogLevel = setting("info", help="How much to log.")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_batch_size < 0:
            raise ConfigError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_body_mb <= 0:
            raise ConfigError(f"max_body_mb must be > 0, got {self.max_body_mb}")
        if self.drain_timeout_s < 0 or self.request_timeout_s <= 0:
            raise ConfigError("drain_timeout_s must be >= 0 and request_timeout_s > 0")
        if not self.stall_timeout_s >= 0:
            raise ConfigError(f"stall_timeout_s must be >= 0 (0: off), got {self.stall_timeout_s}")
        # Validate the batching part eagerly so a bad value fails at the edge.
        BatchConfig(max(self.max_batch_size, 1), self.max_wait_ms, self.max_queue)

    def batch(self, model_max_batch_size: int | None) -> BatchConfig:
        """The batcher's settings, resolving ``max_batch_size=0`` against the model's own."""
        size = self.max_batch_size or model_max_batch_size or 32
        return BatchConfig(size, self.max_wait_ms, self.max_queue)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
