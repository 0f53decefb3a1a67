"""`gpufleet up | down | status | config show`: the fleet, from the command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gpufleet.cli._common import config_errors_exit, run_async, setup_logging
from gpufleet.cli._options import FlagValues, from_settings, options_of
from gpufleet.config.fleet import FleetConfig
from gpufleet.config.ray import RayConfig

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", metavar="PATH", help="YAML file (fleet:, worker:, router: sections)."),
]
RunDirOpt = Annotated[
    str | None,
    typer.Option(
        "--run-dir",
        metavar="PATH",
        help="The fleet's run directory.",
        show_default=FleetConfig().run_dir,
    ),
]


@from_settings(RayConfig, into="ray_flags")
@from_settings(FleetConfig)
def up(
    flags: FlagValues,
    ray_flags: FlagValues,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="PATH",
            help="YAML file (fleet:, worker:, router: sections).",
            rich_help_panel="Files and logs",
        ),
    ] = None,
) -> None:
    """Start one worker per GPU (or CPU workers), the router in front; keep them alive."""
    from gpufleet.config.fleet import load_fleet_config

    with config_errors_exit():
        cfg = load_fleet_config(flags=flags, config_path=config)
        from gpufleet.config.ray import load_ray_config
        from gpufleet.errors import ConfigError

        ray_cfg = load_ray_config(flags=ray_flags, config_path=config)
        if not ray_cfg.enabled and any(v is not None for v in ray_flags.values()):
            given = [o.name for n, o in options_of(RayConfig).items() if ray_flags[n] is not None]
            raise ConfigError(f"{', '.join(given)}: need --ray (they place workers on Ray)")
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
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds to wait for the stop.")
    ] = 120.0,
    force: Annotated[bool, typer.Option("--force", help="Skip draining: kill now.")] = False,
) -> None:
    """Stop the fleet started from this directory (drains first, like Ctrl-C)."""
    from gpufleet.fleet.control import stop_fleet
    from gpufleet.fleet.rundir import RunDir

    rd = RunDir(Path(os.getcwd(), run_dir or FleetConfig().run_dir))
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

    rd = RunDir(Path(os.getcwd(), run_dir or FleetConfig().run_dir))
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
