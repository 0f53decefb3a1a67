"""`gpufleet batches list|show|cancel|download`: the batches a fleet's router keeps."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gpufleet.cli._common import run_async
from gpufleet.errors import RequestFailed

if TYPE_CHECKING:
    from gpufleet.operate.batches import BatchesClient

T = TypeVar("T")

batches_app = typer.Typer(
    name="batches",
    help="Batches a fleet keeps (OpenAI's Batch API on the router): list, show, cancel, download.",
    no_args_is_help=True,
)

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="GPUFLEET_URL", help="The router (http://host:port)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


def _with_client(action: Callable[[BatchesClient], Awaitable[T]], url: str) -> T:
    import aiohttp

    from gpufleet.operate.batches import BatchesClient

    async def main() -> T:
        async with aiohttp.ClientSession(trust_env=False) as session:
            return await action(BatchesClient(session, url))

    try:
        return run_async(main())
    except RequestFailed as exc:
        typer.echo(f"gpufleet: error: {exc.message}", err=True)
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@batches_app.command("list")
def list_batches(
    url: UrlOpt = "http://127.0.0.1:8000",
    limit: Annotated[int, typer.Option(help="Batches to show, newest first.")] = 20,
    after: Annotated[str | None, typer.Option(help="Start after this batch id.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List batches, newest first."""
    from gpufleet.operate.batches import batch_rows

    page = _with_client(lambda c: c.list(limit=limit, after=after), url)
    if json_out:
        _print_json(page)
        return
    for row in batch_rows(page.get("data", [])):
        typer.echo(row)
    if page.get("has_more"):
        typer.echo(f"(more: --after {page.get('last_id')})")


@batches_app.command("show")
def show(
    batch_id: Annotated[str, typer.Argument(help="The batch.")],
    url: UrlOpt = "http://127.0.0.1:8000",
    json_out: JsonOpt = False,
) -> None:
    """Show one batch: status, progress, files."""
    from gpufleet.operate.batches import batch_lines

    batch = _with_client(lambda c: c.show(batch_id), url)
    if json_out:
        _print_json(batch)
        return
    for line in batch_lines(batch):
        typer.echo(line)


@batches_app.command("cancel")
def cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch.")],
    url: UrlOpt = "http://127.0.0.1:8000",
) -> None:
    """Cancel a running batch (what finished is kept in its output file)."""
    batch = _with_client(lambda c: c.cancel(batch_id), url)
    typer.echo(f"{batch['id']} {batch['status']}")


@batches_app.command("download")
def download(
    batch_id: Annotated[str, typer.Argument(help="The batch.")],
    url: UrlOpt = "http://127.0.0.1:8000",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for BATCH_output/error.jsonl.")
    ] = Path("."),
) -> None:
    """Download a finished batch's output file (and its error file, if any)."""

    async def fetch(client: BatchesClient) -> list[tuple[Path, int]]:
        batch = await client.show(batch_id)
        got = []
        for key, kind in (("output_file_id", "output"), ("error_file_id", "error")):
            if batch.get(key):
                dest = output / f"{batch_id}_{kind}.jsonl"
                got.append((dest, await client.download(batch[key], dest)))
        if not got:
            raise RequestFailed(f"batch {batch_id} is {batch['status']}: no file to download yet")
        return got

    for path, size in _with_client(fetch, url):
        typer.echo(f"{path} ({size} bytes)")


def register(app: typer.Typer) -> None:
    """Add ``gpufleet batches`` to ``app``."""
    app.add_typer(batches_app)
