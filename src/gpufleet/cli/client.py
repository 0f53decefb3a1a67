"""`gpufleet generate`: a bulk job from a prompts file over one or many endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from gpufleet.cli._common import config_errors_exit, run_async, setup_logging
from gpufleet.cli._options import FlagValues, from_settings
from gpufleet.config.client import ClientConfig

_PROGRESS_MODES = ("auto", "bar", "plain", "none")


@from_settings(ClientConfig)
def generate(
    prompts_file: Path = typer.Option(
        ...,
        "--prompts-file",
        "-f",
        metavar="PATH",
        help="Text (one prompt or image URL per line) or JSONL (id, input, seed?, parameters?).",
    ),
    *,
    flags: FlagValues,
    progress: str = typer.Option(
        "auto",
        metavar="[" + "|".join(_PROGRESS_MODES) + "]",
        help="How progress is shown (auto: a bar on a TTY).",
    ),
    config: Path | None = typer.Option(
        None, "--config", metavar="PATH", help="YAML file; its client: section."
    ),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="-v: per-item log lines; -vv: debug."
    ),
) -> None:
    """Run every prompt through the endpoints; one output file per item; resumable."""
    from gpufleet.client import Client, read_items, run_job
    from gpufleet.config import load
    from gpufleet.errors import ConfigError, GpufleetError

    with config_errors_exit():
        if progress not in _PROGRESS_MODES:
            raise ConfigError(f"--progress must be one of {', '.join(_PROGRESS_MODES)}")
        cfg = load(ClientConfig, "client", flags=flags, config_path=config)
        items = read_items(prompts_file)
        if not items:
            raise ConfigError(f"{prompts_file} holds no prompts")
        reporter = _reporter(progress, verbose)
        client = Client(config=cfg)

    async def main() -> dict[str, Any]:
        # SIGTERM cancels the job like Ctrl-C: in-flight requests end, files stay whole.
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        if cfg.server_side:
            from gpufleet.client.server_side import run_server_side

            return await run_server_side(cfg, items, cfg.output, progress=reporter)
        async with client:
            return await run_job(client, items, cfg.output, resume=cfg.resume, progress=reporter)

    try:
        summary = run_async(main())
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        typer.echo("gpufleet generate: stopped; run the same command again to resume", err=True)
        raise typer.Exit(130 if isinstance(exc, KeyboardInterrupt) else 143) from None
    except GpufleetError as exc:  # e.g. the endpoint refused the batch: one line, no traceback
        typer.echo(f"gpufleet generate: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({k: summary[k] for k in ("success", "succeeded", "failed", "skipped")}))
    raise typer.Exit(0 if summary["success"] else 1)


def _reporter(mode: str, verbose: int) -> Any:
    """The progress reporter for ``mode``, with logging set up to match it."""
    from gpufleet.client.progress import NullProgress, PlainProgress, RichProgress

    level = "warning" if verbose == 0 else "info" if verbose == 1 else "debug"
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        from rich.logging import RichHandler

        bar = RichProgress()
        handler = RichHandler(console=bar.console, show_path=False, markup=False)
        logging.basicConfig(level=level.upper(), format="%(message)s", handlers=[handler])
        return bar
    setup_logging(level, name="gpufleet-generate")
    return NullProgress() if mode == "none" else PlainProgress()


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("generate")(generate)
