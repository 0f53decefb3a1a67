"""Entry point of the ``gpufleet`` command; each part's commands live in a module of its own."""

from __future__ import annotations

import typer

from gpufleet.cli import client as client_cmds
from gpufleet.cli import export as export_cmds
from gpufleet.cli import fleet as fleet_cmds
from gpufleet.cli import operate as operate_cmds
from gpufleet.cli import router as router_cmds
from gpufleet.cli import worker as worker_cmds

app = typer.Typer(
    name="gpufleet",
    help="One model on every GPU behind one endpoint, and bulk jobs through it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print gpufleet's version."""
    from gpufleet import __version__

    typer.echo(__version__)


for _module in (worker_cmds, router_cmds, fleet_cmds, client_cmds, operate_cmds, export_cmds):
    _module.register(app)


def main() -> None:
    """Run the CLI."""
    app()
