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

_PROGRESS_MODES = ("auto", "bar", "plain", "none")


def generate(
    prompts_file: Path = typer.Option(
        ...,
        "--prompts-file",
        "-f",
        help="text (one prompt or image URL per line) or JSONL (id, input, seed?, parameters?)",
    ),
    endpoint: list[str] | None = typer.Option(
        None,
        "--endpoint",
        "-e",
        help="worker or router URL (repeatable; else GPUFLEET_ENDPOINTS=a,b or endpoints: in YAML)",
    ),
    seed: int | None = typer.Option(None, help="item i gets seed+i unless it has its own"),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="folder for outputs, results.jsonl, summary.json (default outputs)",
    ),
    path: str | None = typer.Option(
        None, help="route to POST to: /predict, /v1/images/generations, /v1/embeddings"
    ),
    per_endpoint_concurrency: int | None = typer.Option(
        None,
        help="requests in flight per endpoint (default: sized from its /stats so batches fill: "
        "2 batches per gpufleet worker, a router's worker caps summed; 2 for other servers; "
        "a number N: N per endpoint, N per worker for a router)",
    ),
    max_attempts: int | None = typer.Option(None, help="attempts per item (default 5)"),
    timeout: float | None = typer.Option(None, help="seconds per request (default 300)"),
    deadline: float | None = typer.Option(None, help="seconds for the whole job (default none)"),
    unavailable_timeout: float | None = typer.Option(
        None,
        help="seconds with no endpoint answering before the items left fail (default 30)",
    ),
    dispatch: str | None = typer.Option(
        None, help="how items go to endpoints: pull (the next free slot) or round-robin"
    ),
    resume: bool | None = typer.Option(
        None, "--resume/--no-resume", help="skip items already done in --output (default on)"
    ),
    server_side: bool = typer.Option(
        False,
        "--server-side",
        help="submit the job as a batch the fleet keeps (one router --endpoint) and follow it",
    ),
    progress: str = typer.Option("auto", help="how progress is shown (auto: a bar on a TTY)"),
    config: Path | None = typer.Option(None, "--config", help="YAML file; its client: section"),
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="-v: per-item log lines; -vv: debug"
    ),
) -> None:
    """Run every prompt through the endpoints; one output file per item; resumable."""
    from gpufleet.client import Client, read_items, run_job
    from gpufleet.config import load
    from gpufleet.config.client import ClientConfig
    from gpufleet.errors import ConfigError

    with config_errors_exit():
        if progress not in _PROGRESS_MODES:
            raise ConfigError(f"--progress must be one of {', '.join(_PROGRESS_MODES)}")
        flags: dict[str, Any] = {
            "endpoints": tuple(endpoint) if endpoint else None,
            "seed": seed,
            "output": output,
            "path": path,
            "per_endpoint_concurrency": per_endpoint_concurrency,
            "max_attempts": max_attempts,
            "timeout": timeout,
            "deadline": deadline,
            "unavailable_timeout": unavailable_timeout,
            "dispatch": dispatch,
            "resume": resume,
            "server_side": server_side or None,
        }
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
