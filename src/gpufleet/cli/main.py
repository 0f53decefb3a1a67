"""Entry point of the ``gpufleet`` command; each part's commands live in a module of its own."""

from __future__ import annotations

import sys

import typer

from gpufleet.cli import batches as batches_cmds
from gpufleet.cli import client as client_cmds
from gpufleet.cli import export as export_cmds
from gpufleet.cli import fleet as fleet_cmds
from gpufleet.cli import operate as operate_cmds
from gpufleet.cli import router as router_cmds
from gpufleet.cli import worker as worker_cmds
from gpufleet.cli._help import polish

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


def _ray_address_form(argv: list[str]) -> list[str]:
    """Accept ``up --ray ADDRESS`` and ``up --ray=ADDRESS`` as ``--ray --ray-address ADDRESS``.

    Click cannot give one option an optional value, and ``up`` takes no positional
    arguments, so a word after ``--ray`` that is not an option can only be an address.
    """
    if argv[:1] != ["up"]:
        return argv
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--ray="):
            out += ["--ray", "--ray-address", arg.removeprefix("--ray=")]
        elif arg == "--ray" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out += ["--ray", "--ray-address", argv[i + 1]]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def main() -> None:
    """Run the CLI."""
    command = typer.main.get_command(app)
    polish(command)
    command(args=_ray_address_form(sys.argv[1:]), prog_name="gpufleet")
