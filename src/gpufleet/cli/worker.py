"""`gpufleet worker`: one model on one device, served over HTTP with dynamic batching."""

from __future__ import annotations

from pathlib import Path

import typer

from gpufleet.cli._common import config_errors_exit, run_async, setup_logging


def _model_args(pairs: list[str] | None) -> dict[str, str] | None:
    """``["k=v", …]`` from repeated ``--model-arg`` into a dict (None when not given)."""
    if not pairs:
        return None
    from gpufleet.errors import ConfigError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-arg takes key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def worker(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="minilm | synthetic | image-demo | pkg.module:Class | file.py:Class",
    ),
    model_arg: list[str] | None = typer.Option(
        None, "--model-arg", help="key=value passed to the model class (repeatable)"
    ),
    device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N (default auto)"),
    host: str | None = typer.Option(None, help="address to bind (default 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port to bind; 0 picks a free one (default 8000)"),
    port_file: str | None = typer.Option(None, help="write the bound port here once listening"),
    allowed_host: list[str] | None = typer.Option(
        None,
        "--allowed-host",
        help="host name served besides loopback ones (repeatable; bound to a non-loopback "
        "address: the only names served, default any; * any, *.x.com subdomains)",
    ),
    max_batch_size: int | None = typer.Option(
        None, help="largest batch; 0 = the model's own, else 32"
    ),
    max_wait_ms: float | None = typer.Option(
        None, help="longest wait after a batch's first item (default 5)"
    ),
    max_queue: int | None = typer.Option(
        None, help="queued items before answering 503 (default 1024)"
    ),
    max_body_mb: float | None = typer.Option(None, help="largest request body (default 32)"),
    drain_timeout_s: float | None = typer.Option(
        None,
        "--drain-timeout",
        "--drain-timeout-s",
        help="seconds SIGTERM waits for in-flight work (default 30)",
    ),
    request_timeout_s: float | None = typer.Option(
        None, help="budget of a request that sends no deadline header (default 600)"
    ),
    isolate_failures: bool | None = typer.Option(
        None,
        "--isolate-failures/--no-isolate-failures",
        help="halve a failed batch until the bad items stand alone (default on)",
    ),
    stall_timeout_s: float | None = typer.Option(
        None,
        "--stall-timeout",
        "--stall-timeout-s",
        help="seconds the device may go without finishing a batch while work waits before"
        " /health turns 503 'stalled' (a wedged GPU); above your longest batch; 0 = off"
        " (default 60)",
    ),
    log_level: str | None = typer.Option(None, help="how much to log"),
    config: Path | None = typer.Option(None, "--config", help="YAML file; its worker: section"),
) -> None:
    """Serve one model on one device: POST /predict, /v1/…, /health, /stats, /metrics."""
    from gpufleet.config import WorkerConfig, load

    with config_errors_exit():
        flags = {
            "model": model,
            "model_args": _model_args(model_arg),
            "device": device,
            "host": host,
            "port": port,
            "port_file": port_file,
            "allowed_hosts": tuple(allowed_host) if allowed_host else None,
            "max_batch_size": max_batch_size,
            "max_wait_ms": max_wait_ms,
            "max_queue": max_queue,
            "max_body_mb": max_body_mb,
            "drain_timeout_s": drain_timeout_s,
            "request_timeout_s": request_timeout_s,
            "isolate_failures": isolate_failures,
            "stall_timeout_s": stall_timeout_s,
            "log_level": log_level,
        }
        cfg = load(WorkerConfig, "worker", flags=flags, config_path=config)
        setup_logging(cfg.log_level, name="gpufleet-worker")
        from gpufleet.worker.main import serve

        code = run_async(serve(cfg))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command("worker")(worker)
