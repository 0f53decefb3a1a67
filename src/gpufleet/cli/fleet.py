"""`gpufleet up | down | status | config show`: the fleet, from the command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gpufleet.cli._common import config_errors_exit, run_async, setup_logging

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML file (fleet:, worker:, router: sections).")
]
RunDirOpt = Annotated[
    str | None, typer.Option("--run-dir", help="The fleet's run directory (default .gpufleet).")
]


def _pairs(pairs: list[str] | None, flag: str) -> dict[str, str] | None:
    if not pairs:
        return None
    from gpufleet.errors import ConfigError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _gpu_ids(value: str) -> str:
    """``GPU_IDS=3`` names GPU 3 (never a count): a single id gets the list's comma."""
    text = value.strip()
    return f"{text}," if text.isdigit() else text


def up(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model of every worker: a built-in name (minilm,"
            " synthetic, image-demo), package.module:Class or path/to/file.py:Class.",
        ),
    ] = None,
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", help="key=value for the model (repeat).")
    ] = None,
    cmd: Annotated[
        str | None,
        typer.Option(help="Run this per GPU instead: {port} {gpu} {index} {host} are filled."),
    ] = None,
    ready_path: Annotated[str | None, typer.Option(help="Readiness path (/health).")] = None,
    startup_timeout: Annotated[
        float | None, typer.Option(help="Seconds a worker may take to get ready (600).")
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help="all | none | N (first N) | 0,2 | UUIDs; env GPU_IDS.")
    ] = None,
    workers_per_gpu: Annotated[int | None, typer.Option(help="Workers per GPU (1).")] = None,
    cpu_workers: Annotated[int | None, typer.Option(help="Workers when no GPU (2).")] = None,
    discovery: Annotated[
        str | None, typer.Option(help="How GPUs are found (auto: NVML, then nvidia-smi).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Endpoint address (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Endpoint port; 0 picks one (8000).")] = None,
    port_file: Annotated[
        str | None, typer.Option(help="Write the endpoint's port here once ready.")
    ] = None,
    worker_host: Annotated[str | None, typer.Option(help="Workers' address.")] = None,
    worker_base_port: Annotated[
        int | None, typer.Option(help="First worker port; 0: free ports (0).")
    ] = None,
    policy: Annotated[str | None, typer.Option(help="The router's policy.")] = None,
    router_arg: Annotated[
        list[str] | None, typer.Option("--router-arg", help="Extra router argument (repeat).")
    ] = None,
    batch_store: Annotated[
        str | None,
        typer.Option(help="The router's Batch API store (RUN_DIR/batches); off: none."),
    ] = None,
    worker_arg: Annotated[
        list[str] | None, typer.Option("--worker-arg", help="Extra worker argument (repeat).")
    ] = None,
    restart_backoff: Annotated[
        float | None, typer.Option(help="First restart delay in seconds (1).")
    ] = None,
    restart_backoff_max: Annotated[
        float | None, typer.Option(help="Longest restart delay (30).")
    ] = None,
    drain_timeout: Annotated[
        float | None, typer.Option(help="Seconds in-flight work may take at stop (30).")
    ] = None,
    stall_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a worker's device may finish nothing while work waits before the"
            " worker counts as stalled and is restarted (the workers' own, 60; 0: off)."
        ),
    ] = None,
    log_dir: Annotated[str | None, typer.Option(help="Per-worker log files (logs).")] = None,
    run_dir: RunDirOpt = None,
    detach: Annotated[bool, typer.Option("--detach", help="Run in the background.")] = False,
    log_level: Annotated[str | None, typer.Option(help="How much to log.")] = None,
    ray: Annotated[
        bool,
        typer.Option("--ray", help="Place the workers on the Ray cluster this machine belongs to."),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (HOST:PORT, ray://HOST:10001; implies --ray)."),
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(help="--ray: GPUs per worker actor (1; 0: CPU).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="--ray: worker count (default: the cluster's GPUs).")
    ] = None,
    ray_max_restarts: Annotated[
        int | None, typer.Option(help="--ray: Ray restarts of a dead actor (-1: always).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Start one worker per GPU (or CPU workers), the router in front; keep them alive."""
    from gpufleet.config.fleet import load_fleet_config

    with config_errors_exit():
        if gpus is None and os.environ.get("GPU_IDS"):
            gpus = _gpu_ids(os.environ["GPU_IDS"])
        flags: dict[str, Any] = {
            "model": model, "model_args": _pairs(model_arg, "--model-arg"), "cmd": cmd,
            "ready_path": ready_path, "startup_timeout_s": startup_timeout, "gpus": gpus,
            "workers_per_gpu": workers_per_gpu, "cpu_workers": cpu_workers,
            "discovery": discovery, "host": host, "port": port, "port_file": port_file,
            "worker_host": worker_host, "worker_base_port": worker_base_port,
            "policy": policy, "router_args": tuple(router_arg) if router_arg else None,
            "batch_store": batch_store,
            "worker_args": tuple(worker_arg) if worker_arg else None,
            "restart_backoff_s": restart_backoff, "restart_backoff_max_s": restart_backoff_max,
            "drain_timeout_s": drain_timeout, "stall_timeout_s": stall_timeout,
            "log_dir": log_dir, "run_dir": run_dir,
            "detach": detach or None, "log_level": log_level,
        }  # fmt: skip
        cfg = load_fleet_config(flags=flags, config_path=config)
        from gpufleet.config.ray import load_ray_config
        from gpufleet.errors import ConfigError

        ray_flags = {
            "address": ray_address or ("auto" if ray else None),
            "gpus_per_worker": gpus_per_worker, "workers": workers,
            "max_restarts": ray_max_restarts,
        }  # fmt: skip
        ray_cfg = load_ray_config(flags=ray_flags, config_path=config)
        if not ray_cfg.enabled and any(v is not None for v in ray_flags.values()):
            raise ConfigError("--workers, --gpus-per-worker and --ray-max-restarts need --ray")
        if ray_cfg.enabled:
            from gpufleet.fleet.ray_cluster import import_ray

            import_ray()  # without Ray: how to install it, exit 2
        config_path = str(config.resolve()) if config else None
        cwd = os.getcwd()
        from gpufleet.fleet.preflight import check_up

        check_up(cfg, config_path=config)  # as typed: errors name the file so
        if cfg.detach:
            _detach(cfg, cwd)
            return
        setup_logging(cfg.log_level, name="gpufleet-up")
        from gpufleet.fleet.up import run_up

        if ray_cfg.enabled:
            from gpufleet.fleet.ray_cluster import run_up_ray

            main = run_up_ray(
                cfg,
                ray_cfg,
                env=dict(os.environ),
                cwd=cwd,
                python=sys.executable,
                config_path=config_path,
                report=lambda line: typer.echo(line),
            )
        else:
            main = run_up(
                cfg,
                env=dict(os.environ),
                cwd=cwd,
                python=sys.executable,
                config_path=config_path,
                report=lambda line: typer.echo(line),
            )
        code = run_async(main)
    raise typer.Exit(code)


def _detach(cfg: Any, cwd: str) -> None:
    from gpufleet.fleet.control import start_detached
    from gpufleet.fleet.rundir import RunDir

    argv = [sys.executable, "-m", "gpufleet", *(a for a in sys.argv[1:] if a != "--detach")]
    # The child must run attached even when the YAML file says ``detach: true``: env beats
    # the file, so it does not fork itself again (and again).
    env = {**os.environ, "GPUFLEET_DETACH": "0"}
    run_dir = RunDir(Path(cwd, cfg.run_dir))
    started = start_detached(argv, run_dir, env=env, cwd=cwd, timeout_s=cfg.startup_timeout_s + 60)
    if started.outcome != "running":
        for line in started.said:  # why: what it said before it exited
            typer.echo(line, err=True)
        typer.echo(f"gpufleet: the fleet (pid {started.pid}) {started.outcome}", err=True)
        typer.echo(f"gpufleet: see {run_dir.log_file}", err=True)
        raise typer.Exit(started.code or 1)
    typer.echo(f"gpufleet: running in the background (pid {started.pid}) at {started.endpoint}")
    typer.echo(f"gpufleet: log {run_dir.log_file}; `gpufleet status`, `gpufleet down`")


def down(
    run_dir: RunDirOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the stop.")] = 120.0,
    force: Annotated[bool, typer.Option("--force", help="Skip draining: kill now.")] = False,
) -> None:
    """Stop the fleet started from this directory (drains first, like Ctrl-C)."""
    from gpufleet.fleet.control import stop_fleet
    from gpufleet.fleet.rundir import RunDir

    rd = RunDir(Path(os.getcwd(), run_dir or ".gpufleet"))
    pid, stopped = stop_fleet(rd, timeout_s=timeout, force=force)
    if pid is None:
        typer.echo(f"gpufleet: no fleet runs from {rd.path}")
        return
    if not stopped:
        typer.echo(
            f"gpufleet: fleet pid {pid} still runs after {timeout:g}s; try --force", err=True
        )
        raise typer.Exit(1)
    typer.echo(f"gpufleet: fleet pid {pid} stopped")


def status(
    run_dir: RunDirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each worker's GPU, pid, port, state, restarts, served and in-flight; the endpoint."""
    from gpufleet.fleet.rundir import RunDir
    from gpufleet.fleet.status import collect, format_status

    rd = RunDir(Path(os.getcwd(), run_dir or ".gpufleet"))
    state = run_async(collect(rd))
    if state is None:
        typer.echo(f"gpufleet: no fleet state in {rd.path} (start one with `gpufleet up`)")
        raise typer.Exit(3)
    typer.echo(json.dumps(state, indent=2) if json_out else format_status(state))
    if not state.get("alive"):
        raise typer.Exit(3)


config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective settings (defaults < file < GPUFLEET_* env) as YAML."""
    import dataclasses

    import yaml

    from gpufleet.config import WorkerConfig, as_dict, load
    from gpufleet.config.fleet import load_fleet_config
    from gpufleet.config.ray import load_ray_config
    from gpufleet.config.router import RouterConfig

    with config_errors_exit():
        fleet_cfg = load_fleet_config(config_path=config)
        fleet = as_dict(dataclasses.replace(fleet_cfg, pools=()))
        fleet.pop("pools")
        if fleet_cfg.pools:
            fleet["pools"] = {
                p.name: {k: v for k, v in as_dict(p).items() if k != "name"}
                for p in fleet_cfg.pools
            }
        out = {
            "fleet": fleet,
            "worker": as_dict(load(WorkerConfig, "worker", config_path=config)),
            "router": as_dict(load(RouterConfig, "router", config_path=config)),
            "ray": as_dict(load_ray_config(config_path=config)),
        }
    if out["router"].get("admin_token"):
        out["router"]["admin_token"] = "***"
    typer.echo(yaml.safe_dump(out, sort_keys=False), nl=False)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.add_typer(config_app, name="config")
