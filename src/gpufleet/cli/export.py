"""`gpufleet export nginx|systemd|compose|k8s|slurm`: deployment files from the fleet's settings."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gpufleet._files import write_atomic
from gpufleet.cli._common import config_errors_exit

#: Environment a systemd unit carries over: what changes the effective settings of `up`.
#: The admin token is a secret and the port file is per process: neither is written out.
_ENV_KEPT = ("GPU_IDS", "CUDA_VISIBLE_DEVICES")
_ENV_DROPPED = ("GPUFLEET_ADMIN_TOKEN", "GPUFLEET_PORT_FILE", "GPUFLEET_DRY_RUN", "GPUFLEET_DETACH")


def _up_args(given: list[tuple[str, Any]]) -> list[str]:
    """The `gpufleet up` flags that were given, in order (repeatable ones repeated)."""
    args: list[str] = []
    for flag, value in given:
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            args += [flag, str(item)]
    return args


def export(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="nginx|systemd|compose|k8s|slurm")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model per worker.")] = None,
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", help="key=value for the model (repeat).")
    ] = None,
    cmd: Annotated[
        str | None,
        typer.Option(help="Run this per GPU instead: {port} {gpu} {index} {host} are filled."),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(help="all | none | N | 0,2 | UUIDs; env GPU_IDS. Unseen GPUs: as given."),
    ] = None,
    workers_per_gpu: Annotated[int | None, typer.Option(help="Workers per GPU (1).")] = None,
    cpu_workers: Annotated[int | None, typer.Option(help="Workers when no GPU (2).")] = None,
    discovery: Annotated[
        str | None, typer.Option(help="auto | nvml | nvidia-smi | none (GPUs as given).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Endpoint address (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Endpoint port (8000).")] = None,
    worker_host: Annotated[str | None, typer.Option(help="Workers' address.")] = None,
    worker_base_port: Annotated[
        int | None, typer.Option(help="First worker port (0: the endpoint's port + 1).")
    ] = None,
    policy: Annotated[str | None, typer.Option(help="The router's policy.")] = None,
    router_arg: Annotated[
        list[str] | None, typer.Option("--router-arg", help="Extra router argument (repeat).")
    ] = None,
    worker_arg: Annotated[
        list[str] | None, typer.Option("--worker-arg", help="Extra worker argument (repeat).")
    ] = None,
    drain_timeout: Annotated[
        float | None, typer.Option(help="Seconds in-flight work may take at stop (30).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
    exe: Annotated[
        str | None,
        typer.Option(
            help="How the file runs gpufleet (default: `gpufleet`; systemd: this Python -m)."
        ),
    ] = None,
    image: Annotated[str, typer.Option(help="compose, k8s: container image.")] = "gpufleet:latest",
    name: Annotated[str, typer.Option(help="Unit, project, job or object name prefix.")] = (
        "gpufleet"
    ),
    namespace: Annotated[str | None, typer.Option(help="k8s: namespace.")] = None,
    workdir: Annotated[
        str | None, typer.Option(help="systemd: WorkingDirectory (default: here).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="systemd: User= of the service.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file (fleet:, worker:, router:).")
    ] = None,
) -> None:
    """Write a deployment file generated from the settings `gpufleet up` would use."""
    from gpufleet.config import load
    from gpufleet.config.fleet import load_fleet_config
    from gpufleet.config.router import RouterConfig
    from gpufleet.fleet.devices import default_probes, discover
    from gpufleet.operate.export import FORMATS, ExportOptions, plan_export, render

    if fmt not in FORMATS:
        typer.echo(
            f"gpufleet: error: unknown format {fmt!r}; one of {', '.join(FORMATS)}", err=True
        )
        raise typer.Exit(2)
    with config_errors_exit():
        if gpus is None and os.environ.get("GPU_IDS"):
            from gpufleet.cli.fleet import _gpu_ids

            gpus = _gpu_ids(os.environ["GPU_IDS"])
        from gpufleet.cli.fleet import _pairs

        flags: dict[str, Any] = {
            "model": model, "model_args": _pairs(model_arg, "--model-arg"), "cmd": cmd,
            "gpus": gpus, "workers_per_gpu": workers_per_gpu, "cpu_workers": cpu_workers,
            "discovery": discovery, "host": host, "port": port, "worker_host": worker_host,
            "worker_base_port": worker_base_port, "policy": policy,
            "router_args": tuple(router_arg) if router_arg else None,
            "worker_args": tuple(worker_arg) if worker_arg else None,
            "drain_timeout_s": drain_timeout,
        }  # fmt: skip
        cfg = load_fleet_config(flags=flags, config_path=config)
        router_cfg = load(RouterConfig, "router", config_path=config)
        probes = default_probes(cfg.discovery, path=os.environ.get("PATH"))
        found = discover(probes, visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        layout = plan_export(cfg, router_cfg, found)
        up_args = _up_args(
            [
                ("--model", model), ("--model-arg", model_arg), ("--cmd", cmd),
                ("--gpus", gpus), ("--workers-per-gpu", workers_per_gpu),
                ("--cpu-workers", cpu_workers), ("--discovery", discovery), ("--host", host),
                ("--port", port), ("--worker-host", worker_host),
                ("--worker-base-port", worker_base_port), ("--policy", policy),
                ("--router-arg", router_arg), ("--worker-arg", worker_arg),
                ("--drain-timeout", drain_timeout),
            ]
        )  # fmt: skip
        config_path = str(config.resolve()) if config else None
        if exe is not None:
            exe_argv = tuple(shlex.split(exe))
        elif fmt == "systemd":
            exe_argv = (sys.executable, "-m", "gpufleet")
        else:
            exe_argv = ("gpufleet",)
        env = {
            k: v
            for k, v in os.environ.items()
            if (k.startswith("GPUFLEET_") or k in _ENV_KEPT) and k not in _ENV_DROPPED
        }
        command = ["gpufleet", "export", fmt, *(["--config", str(config)] if config else [])]
        opts = ExportOptions(
            exe=exe_argv,
            config_path=config_path,
            config_text=config.read_text(encoding="utf-8") if config else None,
            up_args=tuple(up_args),
            env=env,
            image=image,
            name=name,
            namespace=namespace,
            workdir=workdir or os.getcwd(),
            user=user,
            command=shlex.join([*command, *up_args]),
        )
        text = render(fmt, layout, opts)
    if output is None:
        typer.echo(text, nl=False)
        return
    _write(output, text, executable=fmt == "slurm")
    typer.echo(f"gpufleet: wrote {output} ({fmt})", err=True)


def _write(path: Path, text: str, *, executable: bool) -> None:
    """Write ``text`` atomically (a temporary file renamed over ``path``)."""
    write_atomic(path, text, mode=0o755 if executable else None)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("export")(export)
