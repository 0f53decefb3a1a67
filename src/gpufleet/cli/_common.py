"""Helpers shared by the command modules: error reporting at the edge and logging set-up."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from gpufleet.errors import ConfigError

T = TypeVar("T")


@contextmanager
def config_errors_exit() -> Iterator[None]:
    """Turn a ConfigError into one clear line on stderr and exit status 2."""
    try:
        yield
    except ConfigError as exc:
        typer.echo(f"gpufleet: error: {exc}", err=True)
        raise typer.Exit(2) from None


def setup_logging(level: str = "info", *, name: str = "gpufleet") -> None:
    """Configure plain, timestamped logging on stderr for a gpufleet process."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {name}[%(process)d] %(message)s",
        stream=sys.stderr,
    )


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on asyncio's default loop."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
