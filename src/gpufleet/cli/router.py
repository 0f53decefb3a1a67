"""`gpufleet router`: one endpoint in front of many workers or any HTTP model servers."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from gpufleet.cli._common import config_errors_exit, run_async, setup_logging
from gpufleet.cli._options import FlagValues, from_settings
from gpufleet.config.router import RouterConfig


@from_settings(RouterConfig)
def router(
    flags: FlagValues,
    config: Path | None = typer.Option(
        None, "--config", metavar="PATH", help="YAML file; its router: section."
    ),
) -> None:
    """Balance requests over upstreams: health checks, safe retries, admission queue."""
    from gpufleet.config import load
    from gpufleet.router.app import RouterState

    with config_errors_exit():
        cfg = load(RouterConfig, "router", flags=flags, config_path=config).with_token_file()
        RouterState(cfg)  # parses --worker and --route values: errors exit 2 here
    setup_logging(cfg.log_level, name="gpufleet-router")
    if flags["admin_token"] is not None:
        logging.getLogger("gpufleet.router").warning(
            "--admin-token on the command line is visible to every local user (ps, "
            "/proc/PID/cmdline): use GPUFLEET_ADMIN_TOKEN or --admin-token-file"
        )
    from gpufleet.router.main import serve

    extensions = []
    if cfg.batch_store is not None:
        from gpufleet.batches import extension

        extensions.append(extension(cfg))
    with config_errors_exit():  # the port taken: one line, exit 2
        run_async(serve(cfg, extensions=tuple(extensions)))


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command()(router)
