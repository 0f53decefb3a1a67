"""Bulk jobs the fleet keeps: OpenAI's Batch API on the router's endpoint.

A part between the CLI and the router: ``extension(cfg)`` adds the Files and Batches
routes (``api.py``) to a router application, keeps their state in a ``BatchStore``
(``store.py``; ``sqlite.py`` is the embedded default, ``postgres.py`` takes a
``postgresql://`` URL instead of a directory) and runs the batches through the
router itself at the ``batch`` priority (``runner.py``). ``gpufleet router`` installs it
when ``--batch-store`` is set; ``gpufleet up`` sets it to ``<run_dir>/batches``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from aiohttp import web

from gpufleet.batches.api import BatchAPI
from gpufleet.batches.postgres import PostgresStore, is_postgres_url
from gpufleet.batches.records import BatchRecord, FileRecord
from gpufleet.batches.runner import BatchRunner
from gpufleet.batches.sqlite import SqliteStore
from gpufleet.batches.store import BatchStore
from gpufleet.config.router import RouterConfig
from gpufleet.router.app import Extension, RouterState

log = logging.getLogger("gpufleet.batches")


def open_store(where: str) -> BatchStore:
    """The store ``where`` names: a ``postgresql://`` URL, else a directory for SQLite."""
    if is_postgres_url(where):
        return PostgresStore(where)
    return SqliteStore(where)


def extension(
    cfg: RouterConfig,
    *,
    store: BatchStore | None = None,
    clock: Callable[[], float] = time.time,
) -> Extension:
    """The router extension that serves the Batch API from ``cfg.batch_store``.

    ``clock`` (Unix seconds) dates batches and decides when they expire.
    """
    if store is None:
        if cfg.batch_store is None:
            raise ValueError("the Batch API needs a store (batch_store)")
        store = open_store(cfg.batch_store)
    chosen: BatchStore = store

    def install(app: web.Application, state: RouterState) -> None:
        runner = BatchRunner(
            chosen, state.registry, state.admissions, cfg, lambda: state.proxy, clock=clock
        )
        BatchAPI(chosen, runner, cfg, clock=clock).register(app)

        async def lifecycle(app: web.Application) -> AsyncIterator[None]:
            await chosen.open()
            log.info("batch store open at %s", _shown(cfg.batch_store))
            yield
            await runner.aclose()
            await chosen.aclose()

        app.cleanup_ctx.append(lifecycle)
        state.on_listen.append(runner.start)
        state.on_drain.append(runner.drain)
        state.stats_parts["batches"] = runner.stats
        state.collector.parts.append(runner.metrics)

    return install


def _shown(where: str | None) -> str | None:
    """``where`` without a password a URL may carry."""
    if where is None or not is_postgres_url(where):
        return where
    parts = urlsplit(where)
    if parts.password is None:
        return where
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


__all__ = [
    "BatchAPI",
    "BatchRecord",
    "BatchRunner",
    "BatchStore",
    "FileRecord",
    "PostgresStore",
    "SqliteStore",
    "extension",
    "open_store",
]
