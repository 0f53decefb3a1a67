"""``gpufleet up --ray``: join the Ray cluster, plan one worker per GPU, run the usual fleet.

Nothing here manages machines: the cluster is Ray's (``ray start --head`` on one node,
``ray start --address HEAD:6379`` on the others). The fleet joins it as a driver, counts
its GPUs, and runs the same supervisor and router as a local fleet with a
:class:`~gpufleet.fleet.ray_launcher.RayLauncher` that places each worker as an actor.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import shlex
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.config.fleet import FleetConfig
from gpufleet.config.ray import RayConfig
from gpufleet.errors import ConfigError
from gpufleet.fleet.devices import Discovery
from gpufleet.fleet.plan import FleetPlan, WorkerPlan, _worker_argv
from gpufleet.fleet.process import ChildSpec

INSTALL_HINT = "--ray needs Ray on this machine and every node: pip install 'gpufleet[ray]'"
#: Environment a worker on another node gets from ``up``; the rest is the node's own.
_FORWARDED_PREFIXES = ("GPUFLEET_", "HF_", "TRANSFORMERS_", "TORCH_")
_NOT_FORWARDED = ("GPUFLEET_HOST", "GPUFLEET_PORT", "GPUFLEET_PORT_FILE", "GPUFLEET_ADMIN_TOKEN")


@dataclass(frozen=True, slots=True)
class RayOptions:
    """How the launcher asks Ray for each worker (from :class:`RayConfig` and the fleet's)."""

    run_id: str
    namespace: str = "gpufleet"
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    max_restarts: int = -1
    scheduling_strategy: str = "SPREAD"
    startup_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What the fleet found when it joined the cluster."""

    address: str
    nodes: int
    gpus: float
    cpus: float


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (the message says how to install it).
    """
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ConfigError(INSTALL_HINT) from exc


def connect(ray: Any, cfg: RayConfig) -> ClusterInfo:
    """Join the cluster as a driver (blocking: a few seconds); what it holds.

    Raises:
        ConfigError: no cluster answers at the address.
    """
    check_reachable(cfg.address)
    _use_token_if_present()
    try:
        ctx = ray.init(
            address=cfg.address,
            namespace=cfg.namespace,
            # Each worker's output is streamed into its own log file instead.
            log_to_driver=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot join the Ray cluster at {cfg.address}: {exc}") from exc
    resources = ray.cluster_resources()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    address = str(getattr(ctx, "address_info", {}).get("gcs_address", cfg.address))
    return ClusterInfo(address, len(alive), resources.get("GPU", 0.0), resources.get("CPU", 0.0))


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at a ``HOST:PORT`` address (``ray.init`` would retry
    for minutes); ``auto`` and ``ray://`` addresses are left to Ray.

    Raises:
        ConfigError: the connection was refused or timed out.
    """
    if address is None or address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"ray address must be auto, HOST:PORT or ray://HOST:PORT, got {address}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(
            f"nothing answers at the Ray address {address} ({exc.strerror or exc}): "
            "is `ray start --head` running there, and is its port open from here?"
        ) from exc


def _use_token_if_present() -> None:
    # Ray (2.5x) enables token authentication for `ray start` when ~/.ray/auth_token (or
    # RAY_AUTH_TOKEN) exists, but a driver joining by address does not: it then fails
    # with "InvalidAuthToken". Ask Ray to apply the same rule here (its own helper).
    try:
        setup = importlib.import_module("ray._private.authentication.authentication_token_setup")
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except (ImportError, AttributeError, TypeError):
        pass  # another Ray version: its own defaults apply


def worker_count(cfg: RayConfig, cluster: ClusterInfo) -> int:
    """``--workers`` or as many as the cluster's GPUs hold.

    Raises:
        ConfigError: the cluster has no GPU and no worker count was given.
    """
    if cfg.workers is not None:
        return cfg.workers
    if cfg.gpus_per_worker > 0 and cluster.gpus >= cfg.gpus_per_worker:
        return int(cluster.gpus // cfg.gpus_per_worker + 1e-9)
    raise ConfigError(
        f"the Ray cluster at {cluster.address} has {cluster.gpus:g} GPU(s): give --workers N "
        "(with --gpus-per-worker 0 for CPU workers), or add GPU nodes"
    )


def forwarded_env(base: Mapping[str, str]) -> dict[str, str]:
    """gpufleet's and the model libraries' settings; never ``CUDA_VISIBLE_DEVICES`` (Ray's)."""
    env = {
        k: v
        for k, v in base.items()
        if k.startswith(_FORWARDED_PREFIXES) and k not in _NOT_FORWARDED
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_ray_plan(
    cfg: FleetConfig,
    ray_cfg: RayConfig,
    cluster: ClusterInfo,
    *,
    base_env: Mapping[str, str],
    cwd: str,
    config_path: str | None = None,
) -> FleetPlan:
    """One worker spec per slot, with ``{host}`` ``{port_file}`` … filled on its node.

    Raises:
        ConfigError: several pools (not supported on Ray yet), or nothing to run.
    """
    pools = cfg.effective_pools()
    if len(pools) > 1:
        raise ConfigError("--ray runs one pool; several pools need one fleet each for now")
    pool = pools[0]
    count = worker_count(ray_cfg, cluster)
    cpu = ray_cfg.gpus_per_worker == 0
    if pool.cmd is not None:
        argv: tuple[str, ...] = tuple(shlex.split(pool.cmd))
        serves = pool.cmd
    else:
        argv = (
            *_worker_argv(
                pool,
                python="{python}",
                host="{host}",
                port=0,
                cpu=cpu,
                config_path="{config}" if config_path else None,
                stall_timeout_s=cfg.stall_timeout_s,
            ),
            "--port-file",
            "{port_file}",
        )
        serves = str(pool.model)
    env = forwarded_env(base_env)
    workers = []
    for index in range(count):
        name = f"worker-ray-{index}"
        spec = ChildSpec(
            name=name,
            argv=argv,
            env=env,
            host="0.0.0.0",
            port=0,
            log_path=Path(cwd, cfg.log_dir, f"{name}.log"),
            log_max_bytes=int(cfg.log_max_mb * 1024 * 1024),
            log_backups=cfg.log_backups,
            cwd=cwd,
            labels={
                "launcher": "ray",
                "pool": pool.name,
                "index": str(index),
                "placement": "ray (not placed yet)",
            },
        )
        workers.append(WorkerPlan(pool.name, "default", index, None, spec, cfg.ready_path, serves))
    found = Discovery(
        (), f"Ray at {cluster.address}", (f"{cluster.gpus:g} GPU(s) on {cluster.nodes} node(s)",)
    )
    return FleetPlan(tuple(workers), {}, found, on_cpu=cpu)


def ray_startup_lines(ray_cfg: RayConfig, cluster: ClusterInfo, plan: FleetPlan) -> list[str]:
    """What the fleet found on the cluster and what it asks Ray for."""
    each = f"{ray_cfg.gpus_per_worker:g} GPU" if ray_cfg.gpus_per_worker else "no GPU"
    first = plan.workers[0]
    return [
        f"gpufleet: Ray cluster at {cluster.address}: {cluster.nodes} node(s), "
        f"{cluster.gpus:g} GPU(s), {cluster.cpus:g} CPU(s)",
        f"gpufleet: {len(plan.workers)} worker(s) of {first.serves}, {each} each, placed by Ray "
        f"({ray_cfg.strategy}); logs {first.spec.log_path.parent}/worker-ray-N.log",
    ]


async def run_up_ray(
    cfg: FleetConfig,
    ray_cfg: RayConfig,
    *,
    env: Mapping[str, str],
    cwd: str,
    python: str = sys.executable,
    config_path: str | None = None,
    report: Callable[[str], None] = print,
) -> int:
    """Run the fleet with its workers on the Ray cluster until stopped; the exit status."""
    from gpufleet.fleet.ray_launcher import RayLauncher
    from gpufleet.fleet.up import run_up

    ray = import_ray()
    cluster = await asyncio.to_thread(connect, ray, ray_cfg)
    try:
        plan = make_ray_plan(cfg, ray_cfg, cluster, base_env=env, cwd=cwd, config_path=config_path)
        config_text = None
        if config_path is not None:
            config_text = await asyncio.to_thread(Path(config_path).read_text, encoding="utf-8")
        options = RayOptions(
            run_id=f"gpufleet-{secrets.token_hex(4)}",
            namespace=ray_cfg.namespace,
            gpus_per_worker=ray_cfg.gpus_per_worker,
            cpus_per_worker=ray_cfg.cpus_per_worker,
            max_restarts=ray_cfg.max_restarts,
            scheduling_strategy=ray_cfg.strategy,
            startup_timeout_s=cfg.startup_timeout_s,
        )
        launcher = RayLauncher(ray, options, config_text=config_text)
        try:
            return await run_up(
                cfg,
                env=env,
                cwd=cwd,
                python=python,
                config_path=config_path,
                report=report,
                launcher=launcher,
                plan=plan,
                intro=ray_startup_lines(ray_cfg, cluster, plan),
            )
        finally:
            await launcher.aclose()
    finally:
        await asyncio.to_thread(ray.shutdown)


__all__ = [
    "INSTALL_HINT",
    "ClusterInfo",
    "RayOptions",
    "check_reachable",
    "connect",
    "forwarded_env",
    "import_ray",
    "make_ray_plan",
    "ray_startup_lines",
    "run_up_ray",
    "worker_count",
]
