"""`gpufleet worker`: one model on one device, served over HTTP with dynamic batching."""

from __future__ import annotations

from pathlib import Path

import typer

from gpufleet.cli._common import config_errors_exit, run_async, setup_logging
from gpufleet.cli._options import FlagValues, from_settings
from gpufleet.config import WorkerConfig


@from_settings(WorkerConfig)
def worker(
    flags: FlagValues,
    config: Path | None = typer.Option(
        None, "--config", metavar="PATH", help="YAML file; its worker: section."
    ),
) -> None:
    """Serve one model on one device: POST /predict, /v1/…, /health, /stats, /metrics."""
    from gpufleet.config import load

    with config_errors_exit():
        cfg = load(WorkerConfig, "worker", flags=flags, config_path=config)
        setup_logging(cfg.log_level, name="gpufleet-worker")
        from gpufleet.worker.main import serve

        code = run_async(serve(cfg))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("worker")(worker)
