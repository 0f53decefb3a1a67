"""`gpufleet` commands of the operate part: bench, monitor, export."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from gpufleet.cli._common import config_errors_exit, run_async
from gpufleet.cli._options import FlagValues, from_settings
from gpufleet.config.operate import BenchConfig, MonitorConfig
from gpufleet.errors import RequestFailed

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", metavar="PATH", help="YAML file with a section per part."),
]


def _with_scheme(url: str) -> str:
    """``127.0.0.1:8000`` as ``http://127.0.0.1:8000`` (what a user means by it)."""
    return url if "://" in url else f"http://{url}"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"gpufleet: error: {message}", err=True)
    return typer.Exit(code)


@from_settings(BenchConfig)
def bench(
    url: Annotated[
        str, typer.Argument(metavar="URL", help="The router or worker to load (http://host:port).")
    ],
    *,
    flags: FlagValues,
    config: ConfigOpt = None,
) -> None:
    """Measure a fleet: throughput, latency percentiles, errors, each worker's share."""
    from gpufleet.config import load
    from gpufleet.operate.bench import run_bench

    flags = {**flags, "url": _with_scheme(url)}
    if flags["scaling"] and not flags["admin_token"] and "GPUFLEET_ADMIN_TOKEN" not in os.environ:
        flags["admin_token"] = _fleet_admin_token(os.environ.get("GPUFLEET_RUN_DIR", ".gpufleet"))
    with config_errors_exit():
        cfg = load(BenchConfig, "bench", flags=flags, config_path=config)
        if not cfg.json:
            typer.echo(f"bench: {cfg.mode} run on {cfg.url}{cfg.path} …", err=True)
        live = _live_line() if not cfg.json and sys.stderr.isatty() else None
        try:
            result = run_async(run_bench(cfg, progress=live))
        except RequestFailed as exc:
            raise _fail(exc.message) from None
        finally:
            if live is not None:
                sys.stderr.write("\r\x1b[K")  # the live line gives way to the results
    if cfg.report:
        from gpufleet.operate.report import write_report

        write_report(result, cfg.report)
    from gpufleet.operate import text

    if cfg.json:
        typer.echo(json.dumps(text.to_json(result), indent=2))
    else:
        from rich.console import Console

        Console().print(text.render(result))
        if cfg.report:
            typer.echo(f"report: {cfg.report}")
    if result.summary.ok == 0:
        raise typer.Exit(1)


def _live_line() -> Callable[[str], None]:
    """Writes a line over the previous one on the terminal (``\r``, clear to its end)."""

    def show(line: str) -> None:
        sys.stderr.write(f"\r{line}\x1b[K")
        sys.stderr.flush()

    return show


@from_settings(MonitorConfig)
def monitor(
    url: Annotated[
        str | None,
        typer.Argument(
            metavar="URL",
            help="Router or worker URL.",
            show_default=MonitorConfig().url,
        ),
    ] = None,
    *,
    flags: FlagValues,
    config: ConfigOpt = None,
) -> None:
    """Watch every worker live: state, load, latency, batch size, GPU."""
    from gpufleet.config import load

    flags = {**flags, "url": _with_scheme(url) if url else None}
    with config_errors_exit():
        cfg = load(MonitorConfig, "monitor", flags=flags, config_path=config)
    try:
        run_async(_monitor(cfg))
    except RequestFailed as exc:
        raise _fail(exc.message) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _monitor(cfg: MonitorConfig) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from gpufleet.operate import monitor as mon
    from gpufleet.wire.http import PeerClient

    console = Console()
    if not console.is_terminal:
        # Piped or captured output: keep every column readable rather than 80 wide.
        console = Console(width=max(console.width, 160))
    async with PeerClient() as http:
        if cfg.once:
            console.print(await mon.snapshot(cfg, http))
            return
        with Live(Text("connecting …"), console=console, refresh_per_second=4) as live:
            await mon.watch(cfg, http, live)


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
    app.command()(bench)
    app.command()(monitor)


def _fleet_admin_token(run_dir: str = ".gpufleet") -> str | None:
    """The admin token a local ``gpufleet up`` keeps in its run directory, if there is one."""
    from gpufleet.fleet.up import ADMIN_TOKEN_FILE

    try:  # never through a link planted at its name
        fd = os.open(Path(run_dir) / ADMIN_TOKEN_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as f:
            return f.read(4096).strip() or None
    except OSError:
        return None
