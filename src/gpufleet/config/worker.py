"""Settings of one worker process and of its dynamic batcher."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpufleet.config._load import LogLevel
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

    model: str = "minilm"
    #: Keyword arguments for the model class (``--model-arg key=value``).
    model_args: dict[str, str] = field(default_factory=dict)
    #: ``auto`` picks ``cuda`` when torch sees a GPU, else ``cpu``.
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    #: Host names served besides loopback ones when bound to loopback (DNS rebinding);
    #: bound elsewhere, the only names served (empty: any). ``*`` any, ``*.x.com``
    #: subdomains. Also the browser origins that may send non-GET requests.
    allowed_hosts: tuple[str, ...] = ()
    #: Where to write the bound port (useful with ``--port 0``).
    port_file: str | None = None
    #: 0 means: the model's own ``max_batch_size``, else 32.
    max_batch_size: int = 0
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_body_mb: float = 32.0
    drain_timeout_s: float = 30.0
    #: Budget of one request when the caller sends no deadline.
    request_timeout_s: float = 600.0
    #: When a batch fails in ``predict``, halve it until the failing items stand alone, so
    #: one bad input fails only its own request (costs extra predict calls on failures).
    isolate_failures: bool = True
    #: Seconds the device thread may go without finishing a batch (or a stream step)
    #: while work waits or runs before the worker reports itself stalled: ``/health``
    #: answers 503 ``stalled``, new requests 503, and ``gpufleet up`` restarts it. Set it
    #: above the longest batch the model may take; 0 turns the detector off.
    stall_timeout_s: float = 60.0
    log_level: LogLevel = "info"

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
