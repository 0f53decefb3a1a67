"""Settings of ``gpufleet up``: which devices, what runs on each, how it is kept alive.

Everything a flag of ``gpufleet up`` holds is a field of :class:`FleetConfig`; the YAML
``fleet:`` section may also define several ``pool.PoolConfig`` (``pools:``), each with its
own model or command, GPUs and path prefix. Worker batching settings are not copied here:
the fleet passes ``--config FILE`` to every ``gpufleet worker`` it starts, which reads its
own ``worker:`` section (and the inherited ``GPUFLEET_*`` env) like a worker started by hand.
The one exception is ``stall_timeout_s``: the fleet acts on what it detects, so ``up`` takes
it as a flag and passes it on.
Router settings the fleet needs to pass on (``policy``) are fields here; everything else
reaches the router through ``router_args`` or the same ``--config FILE``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gpufleet.config._load import LogLevel, build, gpu_ids
from gpufleet.config._setting import setting
from gpufleet.config._yaml import Located, read_yaml
from gpufleet.config.pool import CMD_PLACEHOLDERS, PLACEHOLDER, PoolConfig, check_cmd, check_gpus
from gpufleet.config.router import PolicyName
from gpufleet.errors import ConfigError

#: ``gpufleet up --help`` lists its options in these panels.
_RUNS, _DEVICES, _LISTENS = "What runs", "Devices", "Where it listens"
_ROUTER, _SUPERVISION, _FILES = "The router", "Supervision", "Files and logs"


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Everything ``gpufleet up`` takes (flags, ``GPUFLEET_*`` env, YAML ``fleet:``)."""

    # What runs on each device (the one pool when ``pools`` is empty).
    model: str = setting(
        "minilm",
        help="Model of every worker: a built-in name (minilm, synthetic, image-demo),"
        " package.module:Class or path/to/file.py:Class.",
        names=("--model", "-m"),
        metavar="MODEL",
        panel=_RUNS,
    )
    model_args: dict[str, str] = setting(
        factory=dict, help="key=value for the model (repeat).", metavar="KEY=VALUE", panel=_RUNS
    )
    #: E.g. ``vllm serve M --port {port}``.
    cmd: str | None = setting(
        None,
        help="Run this per GPU instead: {port} {gpu} {index} {host} are filled.",
        metavar="COMMAND",
        panel=_RUNS,
    )
    ready_path: str = setting("/health", help="Readiness path: 200 means ready.", panel=_RUNS)
    #: Large models load slowly.
    startup_timeout_s: float = setting(
        600.0, help="Seconds a worker may take to get ready.", panel=_RUNS
    )
    #: Batching flags and the like.
    worker_args: tuple[str, ...] = setting(
        (), help="Extra argument for every gpufleet worker (repeat).", panel=_RUNS
    )
    #: Passed to every ``gpufleet worker`` as ``--stall-timeout``: its ``/health`` then
    #: says ``stalled`` and the fleet restarts it. None: the workers' own setting
    #: (``worker:`` section, ``GPUFLEET_STALL_TIMEOUT_S``, else its default).
    stall_timeout_s: float | None = setting(
        None,
        help="Seconds a worker's device may finish nothing while work waits before the"
        " worker counts as stalled and is restarted (unset: the workers' own; 0: off).",
        panel=_RUNS,
    )

    # Devices.
    #: ``N`` is the first N; one index needs the list's comma (``3,``). ``GPU_IDS`` in the
    #: environment is always a list (``GPU_IDS=3`` is GPU 3), read before ``GPUFLEET_GPUS``.
    gpus: str = setting(
        "all",
        help="all | none | N (first N) | 0,2 | UUIDs; env GPU_IDS. Unseen GPUs: as given.",
        metavar="GPUS",
        panel=_DEVICES,
    )
    workers_per_gpu: int = setting(1, help="Workers per GPU.", panel=_DEVICES)
    cpu_workers: int = setting(2, help="Workers when no GPU is found or selected.", panel=_DEVICES)
    discovery: Literal["auto", "nvml", "nvidia-smi", "none"] = setting(
        "auto", help="How GPUs are found (auto: NVML, then nvidia-smi).", panel=_DEVICES
    )

    # Where things listen. ``host``/``port``/``port_file`` are the router's endpoint.
    host: str = setting("127.0.0.1", help="Endpoint address.", panel=_LISTENS)
    port: int = setting(8000, help="Endpoint port; 0 picks one.", panel=_LISTENS)
    port_file: str | None = setting(
        None, help="Write the endpoint's port here once ready.", panel=_LISTENS
    )
    worker_host: str = setting("127.0.0.1", help="Workers' address.", panel=_LISTENS)
    #: Kept across restarts.
    worker_base_port: int = setting(
        0,
        help="First worker port (then +1, +2, …); 0: free ports (export: the endpoint's port + 1).",
        panel=_LISTENS,
    )

    # The router in front.
    #: None: the router's default.
    policy: PolicyName | None = setting(None, help="The router's policy.", panel=_ROUTER)
    router_args: tuple[str, ...] = setting(
        (), help="Extra router argument (repeat).", panel=_ROUTER
    )
    #: The router's ``--batch-store``.
    batch_store: str | None = setting(
        None,
        help="The router's Batch API store, a directory or a postgresql:// URL (unset:"
        " RUN_DIR/batches); off: none.",
        metavar="PATH|URL",
        panel=_ROUTER,
    )

    # Supervision.
    restart_backoff_s: float = setting(
        1.0, help="First restart delay in seconds.", panel=_SUPERVISION
    )
    restart_backoff_max_s: float = setting(30.0, help="Longest restart delay.", panel=_SUPERVISION)
    #: A worker that fails this many times in a row is reported as crash-looping.
    crash_loop_after: int = 3
    #: The back-off starts over once a worker has stayed ready this long.
    backoff_reset_s: float = 60.0
    liveness_interval_s: float = 5.0
    liveness_timeout_s: float = 5.0
    #: Consecutive failed liveness probes before a ready worker is restarted.
    liveness_failures: int = 3
    #: Graceful stop: how long in-flight work may take to finish, per stage.
    drain_timeout_s: float = setting(
        30.0, help="Seconds in-flight work may take at stop.", panel=_SUPERVISION
    )
    #: After SIGTERM's drain budget, how long before SIGKILL.
    kill_timeout_s: float = 10.0

    # Files.
    log_dir: str = setting("logs", help="Per-worker log files.", metavar="PATH", panel=_FILES)
    log_max_mb: float = 50.0
    log_backups: int = 3
    #: Pid file, state JSON and the router's port file live here.
    run_dir: str = setting(".gpufleet", help="The fleet's run directory.", panel=_FILES)
    detach: bool = setting(
        False, help="Run in the background.", names=("--detach",), panel=_SUPERVISION
    )
    log_level: LogLevel = setting("info", help="How much to log.", panel=_FILES)

    #: Several pools (YAML only); empty means one pool made of the fields above.
    pools: tuple[PoolConfig, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", check_gpus(self.gpus))
        check_cmd(self.cmd, "fleet")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if not 0 <= self.worker_base_port <= 65535:
            raise ConfigError(f"worker_base_port must be in 0..65535, got {self.worker_base_port}")
        if not self.ready_path.startswith("/"):
            raise ConfigError(f"ready_path must start with '/', got {self.ready_path!r}")
        if self.workers_per_gpu < 1 or self.cpu_workers < 0:
            raise ConfigError("workers_per_gpu must be >= 1 and cpu_workers >= 0")
        positive = {
            "startup_timeout_s": self.startup_timeout_s,
            "restart_backoff_s": self.restart_backoff_s,
            "liveness_interval_s": self.liveness_interval_s,
            "liveness_timeout_s": self.liveness_timeout_s,
            "log_max_mb": self.log_max_mb,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.stall_timeout_s is not None and not self.stall_timeout_s >= 0:
            raise ConfigError(f"stall_timeout_s must be >= 0 (0: off), got {self.stall_timeout_s}")
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ConfigError("restart_backoff_max_s must be >= restart_backoff_s")
        if self.drain_timeout_s < 0 or self.kill_timeout_s < 0 or self.backoff_reset_s < 0:
            raise ConfigError("drain_timeout_s, kill_timeout_s and backoff_reset_s must be >= 0")
        if self.crash_loop_after < 1 or self.liveness_failures < 1 or self.log_backups < 0:
            raise ConfigError("crash_loop_after and liveness_failures must be >= 1")
        if any(not isinstance(p, PoolConfig) for p in self.pools):
            raise ConfigError("pools can only be defined in the YAML file's fleet: section")
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ConfigError(f"pool names must be unique, got {names}")
        prefixes = [p.prefix for p in self.pools if p.prefix is not None]
        if len(set(prefixes)) != len(prefixes):
            raise ConfigError(f"pool prefixes must be unique, got {prefixes}")
        if len(self.pools) - len(prefixes) > 1:
            raise ConfigError("at most one pool may have no prefix (it takes the other paths)")

    def effective_pools(self) -> tuple[PoolConfig, ...]:
        """The pools to run, every unset field filled from the fleet's own settings."""
        pools = self.pools or (PoolConfig(name="default"),)
        out = []
        for pool in pools:
            is_cmd = pool.cmd is not None or (pool.model is None and self.cmd is not None)
            out.append(
                dataclasses.replace(
                    pool,
                    model=None if is_cmd else (pool.model or self.model),
                    model_args=(pool.model_args or self.model_args) if not is_cmd else {},
                    cmd=(pool.cmd or self.cmd) if is_cmd else None,
                    gpus=pool.gpus if pool.gpus is not None else self.gpus,
                    workers_per_gpu=pool.workers_per_gpu or self.workers_per_gpu,
                    cpu_workers=(
                        pool.cpu_workers if pool.cpu_workers is not None else self.cpu_workers
                    ),
                    worker_args=pool.worker_args or self.worker_args,
                )
            )
        return tuple(out)


def parse_pools(raw: Any) -> tuple[PoolConfig, ...]:
    """Read ``pools:`` given as a mapping ``{name: {...}}`` or a list of ``{name: ..., ...}``."""
    if raw is None:
        return ()
    items: list[Mapping[str, Any]] = []
    if isinstance(raw, Mapping):
        for name, body in raw.items():
            if not isinstance(body, Mapping):
                raise ConfigError(f"pool {name!r} must be a mapping of settings")
            item = Located({**body, "name": str(name)})
            if isinstance(body, Located):
                item.lines, item.source = dict(body.lines), body.source
            item.where = f"fleet.pools.{name}"
            items.append(item)
    elif isinstance(raw, list):
        for body in raw:
            if not isinstance(body, Mapping):
                raise ConfigError("each entry of pools must be a mapping of settings")
            if isinstance(body, Located):
                body.where = f"fleet.pools.{body.get('name', len(items))}"
            items.append(body)
    else:
        raise ConfigError("pools must be a mapping of name -> settings, or a list")
    return tuple(build(PoolConfig, env={}, file_section=item) for item in items)


def load_fleet_config(
    *,
    flags: Mapping[str, Any] | None = None,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> FleetConfig:
    """Build :class:`FleetConfig` from flags, env and the file's ``fleet:`` section (with pools).

    ``GPU_IDS`` in ``env`` fills ``gpus`` as a flag would (it is not a ``GPUFLEET_*``
    variable, and a scheduler or a user sets it for this run).
    """
    if (flags or {}).get("gpus") is None and (ids := gpu_ids(env)) is not None:
        flags = {**(flags or {}), "gpus": ids}
    data = read_yaml(config_path)
    section = data.get("fleet") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"section 'fleet' of {config_path} must be a mapping")
    pools = parse_pools(section.get("pools"))
    section = section.without("pools") if isinstance(section, Located) else dict(section)
    section.pop("pools", None)
    cfg = build(FleetConfig, flags=flags, env=env, file_section=section)
    return dataclasses.replace(cfg, pools=pools) if pools else cfg


__all__ = [
    "CMD_PLACEHOLDERS",
    "PLACEHOLDER",
    "FleetConfig",
    "PoolConfig",
    "check_gpus",
    "load_fleet_config",
    "parse_pools",
]
