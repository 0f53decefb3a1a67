"""``SqliteStore``: the embedded ``BatchStore``, one SQLite database beside a folder of files.

Layout of the store's directory::

    batches.sqlite3 (+ -wal, -shm)   files, batches, results (WAL mode)
    files/<file id>                  file contents, written atomically
    tmp/                             files being written (emptied at open)
    locks/<batch id>                 the claim of the router running the batch (flock)

Every SQLite call runs on one thread of its own (a single-thread executor): the event
loop never waits on the disk, and the connection is only ever used from that thread.
File contents are read and written on a second thread, so a long download never delays
the recording of results. ``synchronous=NORMAL`` in WAL mode keeps every committed
transaction through a crash of the process (``kill -9``); only a crash of the machine
may lose the last ones.

Contents are written to ``tmp/`` (a new file, ``O_EXCL``: never through a link), fsynced,
renamed into ``files/`` and the folder fsynced, before the row that names them commits;
what a crash leaves between the two (contents without a row) is deleted at ``open``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from gpufleet.batches.claims import FileClaims
from gpufleet.batches.records import BatchRecord, FileRecord, ResultRow
from gpufleet.batches.sqlite_tables import DB_NAME, SqliteTables

T = TypeVar("T")

#: Bytes per chunk when a file's contents are read.
READ_CHUNK: Final = 1 << 20


class SqliteStore:
    """Files, batches and results in SQLite (WAL) under ``root``; contents in ``root/files``."""

    def __init__(self, root: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        #: The tables, used only on ``_db_thread``.
        self.tables = SqliteTables(root)
        self.root = self.tables.root
        self.files_dir = self.tables.files_dir
        self.tmp_dir = self.tables.tmp_dir
        self._clock = clock
        self._claims = FileClaims(self.root / "locks")
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="gpufleet-batches-db")
        self._io_thread = ThreadPoolExecutor(1, thread_name_prefix="gpufleet-batches-io")

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, functools.partial(fn, *args))

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io_thread, functools.partial(fn, *args))

    # Lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the database; drop what a crash left half-made."""
        await self._db(self.tables.open)

    async def aclose(self) -> None:
        """Close the database and stop the store's threads."""
        if self.tables.is_open:
            await self._io(self._claims.release_all)
            await self._db(self.tables.close)
        self._db_thread.shutdown(wait=True)
        self._io_thread.shutdown(wait=True)

    async def claim(self, batch_id: str) -> bool:
        """Take the batch's claim (an ``flock`` in ``locks/``); False while another holds it."""
        return await self._io(self._claims.claim, batch_id)

    async def release(self, batch_id: str) -> None:
        """Give up the batch's claim."""
        await self._io(self._claims.release, batch_id)

    def scratch(self) -> Path:
        """Where files are written before ``add_file`` or ``finish_batch`` keeps them."""
        return self.tmp_dir

    # Files --------------------------------------------------------------------------

    async def add_file(self, record: FileRecord, written: Path) -> None:
        """Keep ``written`` as the contents of ``record``."""
        await self._db(self.tables.keep, record, written)

    async def get_file(self, file_id: str) -> FileRecord | None:
        """The file, or None."""
        return await self._db(self.tables.get_file, file_id)

    async def list_files(
        self, *, purpose: str | None, limit: int, after: str | None
    ) -> tuple[list[FileRecord], bool]:
        """Files newest first after the one named ``after``; and whether more follow."""
        return await self._db(self.tables.list_files, purpose, limit, after)

    async def delete_file(self, file_id: str) -> bool:
        """Delete the file's row, then its contents; False when there was none."""
        return await self._db(self.tables.delete_file, file_id)

    async def read_file(self, file_id: str) -> AsyncGenerator[bytes, None]:
        """The file's contents in chunks (``FileNotFoundError`` when there is none)."""
        if await self.get_file(file_id) is None:
            raise FileNotFoundError(file_id)
        fd = await self._io(os.open, self.files_dir / file_id, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            while chunk := await self._io(os.read, fd, READ_CHUNK):
                yield chunk
        finally:
            os.close(fd)

    async def stored_bytes(self) -> int:
        """Bytes of every file kept."""
        return await self._db(self.tables.stored_bytes)

    # Batches ------------------------------------------------------------------------

    async def add_batch(self, record: BatchRecord) -> None:
        """Keep a new batch."""
        await self._db(self.tables.add_batch, record)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch, or None."""
        return await self._db(self.tables.get_batch, batch_id)

    async def list_batches(
        self, *, limit: int, after: str | None
    ) -> tuple[list[BatchRecord], bool]:
        """Batches newest first after the one named ``after``; and whether more follow."""
        return await self._db(self.tables.list_batches, limit, after)

    async def update_batch(self, batch_id: str, **fields: Any) -> BatchRecord | None:
        """Set ``fields`` of the batch; the batch as it is now, or None."""
        return await self._db(self.tables.update_batch, batch_id, fields)

    async def unfinished_batches(self) -> list[BatchRecord]:
        """Batches still to run, finalize or cancel, oldest first."""
        return await self._db(self.tables.unfinished_batches)

    async def batch_counts(self) -> dict[str, int]:
        """How many batches are kept in each status."""
        return await self._db(self.tables.batch_counts)

    async def file_in_use(self, file_id: str) -> bool:
        """True when an unfinished batch reads ``file_id``."""
        return await self._db(self.tables.file_in_use, file_id)

    # Results ------------------------------------------------------------------------

    async def add_results(self, batch_id: str, rows: Sequence[ResultRow]) -> None:
        """Record results in one transaction; a ``custom_id`` already there stays as it was."""
        await self._db(self.tables.add_results, batch_id, rows)

    async def result_ids(self, batch_id: str) -> set[str]:
        """The ``custom_id`` s of the batch that have a result."""
        return await self._db(self.tables.result_ids, batch_id)

    async def results_page(self, batch_id: str, *, after_line: int, limit: int) -> list[ResultRow]:
        """Results of the batch in input order, from the line after ``after_line``."""
        return await self._db(self.tables.results_page, batch_id, after_line, limit)

    async def finish_batch(
        self, batch_id: str, outputs: Sequence[tuple[FileRecord, Path]], **fields: Any
    ) -> BatchRecord | None:
        """Keep ``outputs`` and set ``fields`` in one transaction."""
        return await self._db(self.tables.finish_batch, batch_id, outputs, fields)

    async def sweep(self, before: int) -> tuple[int, int]:
        """Delete finished batches and files created before ``before``; (batches, files)."""
        return await self._db(self.tables.sweep, before)


__all__ = ["DB_NAME", "READ_CHUNK", "SqliteStore"]
