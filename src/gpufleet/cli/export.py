"""`gpufleet export nginx|systemd|compose|k8s|slurm`: deployment files from the fleet's settings."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from gpufleet._files import write_atomic
from gpufleet.cli._common import config_errors_exit
from gpufleet.cli._options import FlagValues, from_settings, given_args, options_of
from gpufleet.config.fleet import FleetConfig
from gpufleet.operate.export.options import ExportOptions

#: Environment a systemd unit carries over: what settings are read from (config's
#: settings_env()) and the device mask. The admin token is a secret and the port file is
#: per process: neither is written out.
_ENV_KEPT = ("CUDA_VISIBLE_DEVICES",)
_ENV_DROPPED = ("GPUFLEET_ADMIN_TOKEN", "GPUFLEET_PORT_FILE", "GPUFLEET_DRY_RUN", "GPUFLEET_DETACH")


#: The settings of `gpufleet up` that `export` takes as flags (they shape the files it
#: writes) and hands on to the `up` it runs (systemd's ExecStart).
_UP_FIELDS = (
    "model", "model_args", "cmd", "gpus", "workers_per_gpu", "cpu_workers", "discovery",
    "host", "port", "worker_host", "worker_base_port", "policy", "router_args",
    "batch_store", "worker_args", "drain_timeout_s",
)  # fmt: skip


@from_settings(ExportOptions, into="export_flags")
@from_settings(FleetConfig, only=_UP_FIELDS)
def export(
    fmt: Annotated[
        str, typer.Argument(metavar="FORMAT", help="nginx | systemd | compose | k8s | slurm.")
    ],
    *,
    flags: FlagValues,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="PATH", help="Write here.", show_default="stdout"),
    ] = None,
    exe: Annotated[
        str | None,
        typer.Option(
            metavar="COMMAND",
            help="How the file runs gpufleet (systemd: this Python -m gpufleet).",
            show_default="gpufleet",
        ),
    ] = None,
    export_flags: FlagValues,
    workdir: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="systemd: WorkingDirectory.", show_default="here"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", metavar="PATH", help="YAML file (fleet:, worker:, router:)."),
    ] = None,
) -> None:
    """Write a deployment file generated from the settings `gpufleet up` would use."""
    from gpufleet.config import load
    from gpufleet.config._load import settings_env
    from gpufleet.config.fleet import load_fleet_config
    from gpufleet.config.router import RouterConfig
    from gpufleet.fleet.devices import default_probes, discover
    from gpufleet.operate.export import FORMATS, plan_export, render

    if fmt not in FORMATS:
        typer.echo(
            f"gpufleet: error: unknown format {fmt!r}; one of {', '.join(FORMATS)}", err=True
        )
        raise typer.Exit(2)
    with config_errors_exit():
        cfg = load_fleet_config(flags=flags, config_path=config)
        router_cfg = load(RouterConfig, "router", config_path=config)
        probes = default_probes(cfg.discovery, path=os.environ.get("PATH"))
        found = discover(probes, visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        layout = plan_export(cfg, router_cfg, found)
        up_args = given_args(options_of(FleetConfig, _UP_FIELDS), flags)
        config_path = str(config.resolve()) if config else None
        if exe is not None:
            exe_argv = tuple(shlex.split(exe))
        elif fmt == "systemd":
            exe_argv = (sys.executable, "-m", "gpufleet")
        else:
            exe_argv = ("gpufleet",)
        kept = {k: os.environ[k] for k in _ENV_KEPT if k in os.environ}
        env = {k: v for k, v in {**settings_env(), **kept}.items() if k not in _ENV_DROPPED}
        command = ["gpufleet", "export", fmt, *(["--config", str(config)] if config else [])]
        given = {k: v for k, v in export_flags.items() if v is not None}
        opts = ExportOptions(
            **given,
            exe=exe_argv,
            config_path=config_path,
            config_text=config.read_text(encoding="utf-8") if config else None,
            up_args=tuple(up_args),
            env=env,
            workdir=workdir or os.getcwd(),
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
