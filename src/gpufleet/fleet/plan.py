"""What to start where: one worker spec per (pool, device, slot), and the router's spec.

Pure apart from choosing ports: given the settings, the GPUs found and the environment
to inherit, it says which command each child runs, with which ``CUDA_VISIBLE_DEVICES``,
on which port, logging to which file.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpufleet.config.fleet import PLACEHOLDER, FleetConfig, PoolConfig
from gpufleet.errors import ConfigError
from gpufleet.fleet.devices import Discovery, Gpu, select
from gpufleet.fleet.ports import PortAllocator
from gpufleet.fleet.process import ChildSpec

#: Env a child must not inherit from ``up``: the fleet sets these per child.
_NOT_INHERITED = ("GPUFLEET_HOST", "GPUFLEET_PORT", "GPUFLEET_PORT_FILE", "GPUFLEET_ADMIN_TOKEN")
ADMIN_TOKEN_ENV = "GPUFLEET_ADMIN_TOKEN"


class RouterMember(Protocol):
    """What the router's command line needs of a worker."""

    @property
    def url(self) -> str: ...

    @property
    def router_pool(self) -> str: ...


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """One worker to keep alive."""

    pool: str
    #: The router pool it joins (``default`` for the pool without a prefix).
    router_pool: str
    #: Position inside its pool (``{index}``).
    index: int
    gpu: Gpu | None
    spec: ChildSpec
    ready_path: str
    #: The model name, or the command line, for start-up lines and status.
    serves: str

    @property
    def url(self) -> str:
        """Where the worker will serve."""
        return self.spec.url

    @property
    def device(self) -> str:
        """``gpu0`` … or ``cpu``."""
        return "cpu" if self.gpu is None else f"gpu{self.gpu.index}"


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """Every worker of the fleet, and the router's routes."""

    workers: tuple[WorkerPlan, ...]
    #: ``PREFIX -> router pool``.
    routes: Mapping[str, str]
    discovery: Discovery
    #: No GPU was used: the workers run on CPU.
    on_cpu: bool


def _child_env(base: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _NOT_INHERITED}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def expand_cmd(template: str, *, port: int, gpu: str, index: int, host: str) -> tuple[str, ...]:
    """Fill ``{port}`` ``{gpu}`` ``{index}`` ``{host}`` and split like a shell (no shell runs)."""
    values = {"port": str(port), "gpu": gpu, "index": str(index), "host": host}
    text = PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    return tuple(shlex.split(text))


def _worker_argv(
    pool: PoolConfig,
    *,
    python: str,
    host: str,
    port: int,
    cpu: bool,
    config_path: str | None,
    stall_timeout_s: float | None = None,
) -> tuple[str, ...]:
    argv = [python, "-m", "gpufleet", "worker", "--model", str(pool.model)]
    for key, value in pool.model_args.items():
        argv += ["--model-arg", f"{key}={value}"]
    argv += ["--host", host, "--port", str(port)]
    if cpu:
        argv += ["--device", "cpu"]
    if stall_timeout_s is not None:
        argv += ["--stall-timeout", f"{stall_timeout_s:g}"]
    if config_path:
        argv += ["--config", config_path]
    return (*argv, *pool.worker_args)  # last: a pool's own --stall-timeout wins


def make_plan(
    cfg: FleetConfig,
    discovery: Discovery,
    *,
    python: str,
    base_env: Mapping[str, str],
    cwd: str,
    config_path: str | None = None,
    cpu_count: int | None = None,
) -> FleetPlan:
    """Lay out every worker of ``cfg`` on the GPUs ``discovery`` found.

    Raises:
        ConfigError: a selection names a GPU that is not there, or nothing would run.
    """
    ports = PortAllocator(cfg.worker_host, cfg.worker_base_port, avoid={cfg.port})
    log_dir = Path(cwd, cfg.log_dir)
    pools = cfg.effective_pools()
    layout: list[tuple[PoolConfig, list[Gpu | None]]] = []
    for pool in pools:
        gpus = select(discovery.gpus, pool.gpus or "all")
        slots: list[Gpu | None] = [g for g in gpus for _ in range(pool.workers_per_gpu or 1)]
        if not gpus:
            slots = [None] * (pool.cpu_workers or 0)
        layout.append((pool, slots))
    cpu_total = sum(1 for _, slots in layout for s in slots if s is None)
    threads = max(1, (cpu_count or os.cpu_count() or 1) // max(1, cpu_total))
    workers: list[WorkerPlan] = []
    for pool, slots in layout:
        router_pool = "default" if pool.prefix is None else pool.name
        for index, gpu in enumerate(slots):
            port = ports.take()
            env = _child_env(base_env)
            if gpu is None:
                env["CUDA_VISIBLE_DEVICES"] = ""
                # CPU workers share the cores: without this each one starts a thread per core.
                env.setdefault("OMP_NUM_THREADS", str(threads))
            else:
                env["CUDA_VISIBLE_DEVICES"] = gpu.visible_devices
                env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            label = "cpu" if gpu is None else str(gpu.index)
            if pool.cmd is not None:
                argv = expand_cmd(pool.cmd, port=port, gpu=label, index=index, host=cfg.worker_host)
                serves = pool.cmd
            else:
                argv = _worker_argv(
                    pool,
                    python=python,
                    host=cfg.worker_host,
                    port=port,
                    cpu=gpu is None,
                    config_path=config_path,
                    stall_timeout_s=cfg.stall_timeout_s,
                )
                serves = str(pool.model)
            spec = ChildSpec(
                name=f"worker-{label}-{port}",
                argv=argv,
                env=env,
                host=cfg.worker_host,
                port=port,
                log_path=log_dir / f"worker-{label}-{port}.log",
                log_max_bytes=int(cfg.log_max_mb * 1024 * 1024),
                log_backups=cfg.log_backups,
                cwd=cwd,
                labels={"pool": pool.name, "index": str(index), "device": label},
            )
            workers.append(
                WorkerPlan(pool.name, router_pool, index, gpu, spec, cfg.ready_path, serves)
            )
    if not workers:
        raise ConfigError("nothing to start: no GPU selected and cpu_workers is 0")
    routes = {p.prefix: p.name for p in pools if p.prefix is not None}
    return FleetPlan(tuple(workers), routes, discovery, on_cpu=cpu_total == len(workers))


#: Where a fleet's nodes live: the private ranges (RFC 1918, shared address space, IPv6
#: unique local). Its router lets the fleet add workers there; link-local and metadata
#: addresses stay refused whatever the ranges.
FLEET_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")


def router_spec(
    cfg: FleetConfig,
    plan: FleetPlan,
    members: Sequence[RouterMember],
    *,
    python: str,
    base_env: Mapping[str, str],
    cwd: str,
    port: int,
    port_file: Path,
    token: str,
    config_path: str | None = None,
) -> ChildSpec:
    """The router's command line: ``members`` as ``--worker``, the pools' ``--route`` flags."""
    argv = [python, "-m", "gpufleet", "router", "--host", cfg.host, "--port", str(port)]
    argv += ["--port-file", str(port_file)]
    for w in members:
        target = w.url if w.router_pool == "default" else f"{w.router_pool}@{w.url}"
        argv += ["--worker", target]
    for prefix, pool in plan.routes.items():
        argv += ["--route", f"{prefix}={pool}"]
    if cfg.policy:
        argv += ["--policy", cfg.policy]
    if cfg.ready_path != "/health":
        # What says "ready" to the fleet says it to the router's probes too (--cmd servers
        # without /health): one path for both.
        argv += ["--health-path", cfg.ready_path]
    if cfg.batch_store is not None and cfg.batch_store.startswith(("postgresql://", "postgres://")):
        argv += ["--batch-store", cfg.batch_store]  # a database URL, not a folder
    elif cfg.batch_store != "off":
        argv += ["--batch-store", str(Path(cwd, cfg.batch_store or Path(cfg.run_dir, "batches")))]
    for network in FLEET_NETWORKS:
        # The fleet adds its own workers through the admin API: on Ray (or a worker_host
        # that is not loopback) they live at the nodes' private addresses.
        argv += ["--allow-upstream", network]
    if config_path:
        argv += ["--config", config_path]
    env = _child_env(base_env)
    env[ADMIN_TOKEN_ENV] = token
    return ChildSpec(
        name="router",
        argv=(*argv, *cfg.router_args),
        env=env,
        host=cfg.host,
        port=port,
        log_path=Path(cwd, cfg.log_dir, "router.log"),
        log_max_bytes=int(cfg.log_max_mb * 1024 * 1024),
        log_backups=cfg.log_backups,
        cwd=cwd,
    )


__all__ = [
    "ADMIN_TOKEN_ENV",
    "FleetPlan",
    "RouterMember",
    "WorkerPlan",
    "expand_cmd",
    "make_plan",
    "router_spec",
]
