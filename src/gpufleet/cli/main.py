"""Entry point of the ``gpufleet`` command; each part's commands live in a module of its own."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from gpufleet.cli import batches as batches_cmds
from gpufleet.cli import client as client_cmds
from gpufleet.cli import export as export_cmds
from gpufleet.cli import fleet as fleet_cmds
from gpufleet.cli import operate as operate_cmds
from gpufleet.cli import router as router_cmds
from gpufleet.cli import worker as worker_cmds
from gpufleet.cli._help import commands, polish_command
from gpufleet.cli._optional_value import allow_bare_values


class _Gpufleet(TyperGroup):
    """The ``gpufleet`` group: each command finished once typer has built it.

    Built here (not in ``main``) so that every way of running the app, typer's test
    runner included, parses and shows the same options.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in [self, *commands(self)]:
            allow_bare_values(command)
            polish_command(command)


app = typer.Typer(
    cls=_Gpufleet,
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


for _module in (
    worker_cmds,
    router_cmds,
    fleet_cmds,
    client_cmds,
    batches_cmds,
    operate_cmds,
    export_cmds,
):
    _module.register(app)


def main() -> None:
    """Run the CLI."""
    typer.main.get_command(app)(prog_name="gpufleet")
