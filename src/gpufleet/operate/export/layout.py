"""What every deployment file describes: the fleet ``gpufleet up`` would run, laid out.

Pure: from the effective :class:`FleetConfig` (and the router's settings) and the GPUs
discovery found, it says which worker runs on which GPU, on which port, in which pool.
It differs from ``fleet.plan`` on two points, because a file is written for a machine
that may not be this one:

- ports are never "free ports picked now": workers take ``worker_base_port`` (or the
  endpoint's port + 1), then +1, +2, …, skipping the endpoint's port; an endpoint port of
  0 becomes 8000;
- a GPU selection this machine cannot see (``--gpus 4`` or ``0,2`` on a laptop with no
  GPU) is taken as written, as indices of the target machine. Where discovery does see
  GPUs, selection works exactly as for ``up`` (inherited mask, UUIDs, counts).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from gpufleet.config.fleet import PLACEHOLDER, FleetConfig, PoolConfig
from gpufleet.config.router import RouterConfig
from gpufleet.errors import ConfigError
from gpufleet.fleet.devices import Discovery, Gpu, select

#: The endpoint port used when the settings say 0 (a file needs a real one).
DEFAULT_PORT = 8000


@dataclass(frozen=True, slots=True)
class Slot:
    """One worker: its pool, its GPU (None: a CPU worker) and its port."""

    pool: str
    #: Position inside its pool (``{index}``).
    index: int
    gpu: Gpu | None
    port: int
    #: The k-th worker on the same GPU (``workers_per_gpu`` > 1), from 0.
    copy: int = 0

    @property
    def device(self) -> str:
        """``gpu0`` … or ``cpu0`` …, unique inside a pool with ``copy``."""
        base = "cpu" if self.gpu is None else f"gpu{self.gpu.index}"
        if self.gpu is None:
            return f"{base}{self.index}"
        return base if self.copy == 0 else f"{base}-{self.copy}"

    @property
    def gpu_label(self) -> str:
        """What ``{gpu}`` means in a ``cmd`` template (as for ``up``): index or ``cpu``."""
        return "cpu" if self.gpu is None else str(self.gpu.index)

    @property
    def visible_devices(self) -> str:
        """``CUDA_VISIBLE_DEVICES`` for this worker on the target machine ("" on CPU)."""
        return "" if self.gpu is None else self.gpu.visible_devices


@dataclass(frozen=True, slots=True)
class PoolLayout:
    """One pool: its effective settings and its workers."""

    config: PoolConfig
    slots: tuple[Slot, ...]
    #: The fleet's ``stall_timeout_s``, passed to each ``gpufleet worker`` (None: theirs).
    stall_timeout_s: float | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def router_pool(self) -> str:
        """The router pool it joins: ``default`` for the pool without a prefix."""
        return "default" if self.config.prefix is None else self.config.name

    @property
    def prefix(self) -> str | None:
        return self.config.prefix

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        """The distinct GPUs of the pool, in order (empty: CPU workers)."""
        seen: dict[int, Gpu] = {}
        for s in self.slots:
            if s.gpu is not None:
                seen.setdefault(s.gpu.index, s.gpu)
        return tuple(seen.values())

    @property
    def serves(self) -> str:
        """The model name or the command, for comments."""
        return self.config.cmd if self.config.cmd is not None else str(self.config.model)

    def worker_argv(
        self,
        slot: Slot,
        *,
        exe: Sequence[str],
        host: str,
        config_path: str | None,
        gpu_label: str | None = None,
        port: str | None = None,
        index: str | None = None,
    ) -> tuple[str, ...]:
        """The worker's command line: ``EXE worker …`` or the pool's filled ``cmd``.

        ``gpu_label`` replaces ``{gpu}`` where the target numbers devices its own way
        (inside a container that sees one GPU, it is ``0``); ``port`` and ``index``
        replace the slot's where the target decides them (a SLURM node).
        """
        pool = self.config
        port_text = str(slot.port) if port is None else port
        if pool.cmd is not None:
            label = slot.gpu_label if gpu_label is None else gpu_label
            values = {
                "port": port_text,
                "gpu": label,
                "index": str(slot.index) if index is None else index,
                "host": host,
            }
            text = PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), pool.cmd)
            return tuple(shlex.split(text))
        argv = [*exe, "worker", "--model", str(pool.model)]
        for key, value in pool.model_args.items():
            argv += ["--model-arg", f"{key}={value}"]
        argv += ["--host", host, "--port", port_text]
        if slot.gpu is None:
            argv += ["--device", "cpu"]
        if self.stall_timeout_s is not None:
            argv += ["--stall-timeout", f"{self.stall_timeout_s:g}"]
        if config_path:
            argv += ["--config", config_path]
        return (*argv, *pool.worker_args)


@dataclass(frozen=True, slots=True)
class ExportLayout:
    """The whole fleet as the files describe it."""

    fleet: FleetConfig
    router: RouterConfig
    pools: tuple[PoolLayout, ...]
    #: The endpoint's port (never 0).
    port: int
    #: Where the GPUs came from: ``nvidia-smi``, ``NVML`` or ``as given``.
    gpu_source: str

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(s for p in self.pools for s in p.slots)

    @property
    def routes(self) -> dict[str, str]:
        """``PREFIX -> router pool`` for the pools with a prefix."""
        return {p.prefix: p.router_pool for p in self.pools if p.prefix is not None}

    @property
    def on_cpu(self) -> bool:
        return all(s.gpu is None for s in self.slots)

    def router_argv(
        self,
        *,
        exe: Sequence[str],
        host: str,
        urls: Sequence[tuple[str, str]],
        config_path: str | None = None,
    ) -> tuple[str, ...]:
        """``EXE router …`` in front of ``urls`` (``(router_pool, url)`` pairs)."""
        argv = [*exe, "router", "--host", host, "--port", str(self.port)]
        if config_path:
            argv += ["--config", config_path]
        for pool, url in urls:
            argv += ["--worker", url if pool == "default" else f"{pool}@{url}"]
        for prefix, pool in self.routes.items():
            argv += ["--route", f"{prefix}={pool}"]
        if self.fleet.policy:
            argv += ["--policy", self.fleet.policy]
        if self.fleet.batch_store not in (None, "off"):
            # Where ``up`` was given a store (a folder, or a PostgreSQL URL), its router
            # keeps its batches there; unset, ``up`` picks a run-dir folder a deployment
            # file has no equivalent of, so none is passed.
            argv += ["--batch-store", str(self.fleet.batch_store)]
        return (*argv, *self.fleet.router_args)


def _as_given(spec: str) -> list[Gpu]:
    """GPUs of a target machine this one cannot see, read from the selection itself."""
    if spec in {"all", "none"}:
        return []
    if spec.isdigit():
        return [Gpu(i, i, "", "") for i in range(int(spec))]
    gpus: list[Gpu] = []
    for n, entry in enumerate(e.strip() for e in spec.split(",") if e.strip()):
        if entry.isdigit():
            gpus.append(Gpu(int(entry), int(entry), "", ""))
        else:
            gpus.append(Gpu(n, n, entry, "", pin_by_uuid=True))
    return gpus


def plan_export(cfg: FleetConfig, router: RouterConfig, discovery: Discovery) -> ExportLayout:
    """Lay out every worker of ``cfg`` for a deployment file.

    Raises:
        ConfigError: a selection names a GPU discovery did not find, or nothing would run.
    """
    port = cfg.port or DEFAULT_PORT
    next_port = cfg.worker_base_port or port + 1
    pools: list[PoolLayout] = []
    for pool in cfg.effective_pools():
        spec = pool.gpus or "all"
        gpus = select(discovery.gpus, spec) if discovery.gpus else _as_given(spec)
        placed: list[tuple[Gpu | None, int]] = [
            (g, k) for g in gpus for k in range(pool.workers_per_gpu or 1)
        ]
        if not gpus:
            placed = [(None, 0)] * (pool.cpu_workers or 0)
        slots = []
        for index, (gpu, copy) in enumerate(placed):
            if next_port == port:
                next_port += 1
            if next_port > 65535:
                raise ConfigError("worker ports ran past 65535; lower --worker-base-port")
            slots.append(Slot(pool.name, index, gpu, next_port, copy))
            next_port += 1
        pools.append(PoolLayout(pool, tuple(slots), cfg.stall_timeout_s))
    if not any(p.slots for p in pools):
        raise ConfigError("nothing to export: no GPU selected and cpu_workers is 0")
    source = discovery.source if discovery.gpus else "as given"
    return ExportLayout(cfg, router, tuple(pools), port, source)


__all__ = ["DEFAULT_PORT", "ExportLayout", "PoolLayout", "Slot", "plan_export"]
