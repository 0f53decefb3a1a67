"""``PostgresStore``: the ``BatchStore`` in a PostgreSQL database (``--batch-store postgresql://…``).

For fleets that outgrow one machine: files, batches, results and the files' contents all
live in the database (contents as 1 MiB ``bytea`` chunks), so nothing of a batch is kept
on the router's disk but the scratch folder uploads and outputs are written to before
they are copied in. Tables are prefixed ``gpufleet_`` and created at ``open`` (under an
advisory lock, so routers starting together do not race).

The driver is psycopg 3 (the ``postgres`` extra), used through its asyncio connection:
the event loop never waits on the network. Two connections: one for every change and
lookup, one that streams file contents, so a long download never delays the recording
of results. Each is used by one call at a time (an ``asyncio.Lock``); a broken one is
opened again at its next use.

The exactly-once contract holds as with SQLite: ``results`` has ``(batch_id,
custom_id)`` as its key and a second result is ignored (``ON CONFLICT DO NOTHING``);
the counts move only by the rows actually inserted, in the same transaction; and
``finish_batch`` copies the outputs in and sets the final state in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

from gpufleet.batches import tables
from gpufleet.batches.records import FINISHED, UNFINISHED, BatchRecord, FileRecord, ResultRow

#: Bytes per stored chunk of a file's contents (and per read from the scratch file).
CHUNK: Final = 1 << 20
#: ``pg_advisory_xact_lock`` key held while the schema is created.
_SCHEMA_LOCK: Final = 0x6770666C  # "gpfl"
#: URL schemes this store takes.
SCHEMES: Final = ("postgresql://", "postgres://")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gpufleet_files (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    purpose TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gpufleet_file_chunks (
    file_id TEXT NOT NULL REFERENCES gpufleet_files (id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (file_id, n)
);
CREATE TABLE IF NOT EXISTS gpufleet_batches (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    completed BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gpufleet_batches_status ON gpufleet_batches (status);
CREATE TABLE IF NOT EXISTS gpufleet_results (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    ok BOOLEAN NOT NULL,
    doc BYTEA NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);
CREATE INDEX IF NOT EXISTS gpufleet_results_line ON gpufleet_results (batch_id, line);
"""


def is_postgres_url(store: str) -> bool:
    """True when ``store`` names a PostgreSQL database rather than a directory."""
    return store.startswith(SCHEMES)


def _read_chunk(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(CHUNK)


class _Connection:
    """One psycopg connection, used by one call at a time, opened again when broken."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Any = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        """The connection (autocommit; group statements with ``conn.transaction()``)."""
        import psycopg  # the optional ``postgres`` extra: imported only when used

        async with self._lock:
            if self._conn is None or self._conn.broken or self._conn.closed:
                if self._conn is not None:
                    # A broken connection still holds its socket until closed: close it
                    # here, not at garbage collection (a ResourceWarning there).
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None
                self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            yield self._conn

    async def aclose(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


class PostgresStore:
    """Files, batches, results and file contents in the PostgreSQL database at ``url``."""

    def __init__(self, url: str) -> None:
        if not is_postgres_url(url):
            raise ValueError(f"not a PostgreSQL URL: {url!r}")
        self.url = url
        self._db = _Connection(url)
        self._io = _Connection(url)
        self._scratch: Path | None = None

    # Lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables when missing; make a scratch folder for files being written."""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "a PostgreSQL batch store needs psycopg: pip install 'gpufleet[postgres]'"
            ) from None
        self._scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="gpufleet-batches-"))
        async with self._db.use() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await conn.execute(_SCHEMA)

    async def aclose(self) -> None:
        """Close both connections and remove the scratch folder."""
        await self._db.aclose()
        await self._io.aclose()
        if self._scratch is not None:
            await asyncio.to_thread(shutil.rmtree, self._scratch, True)
            self._scratch = None

    def scratch(self) -> Path:
        """A local folder where files are written before ``add_file``/``finish_batch``."""
        if self._scratch is None:
            raise RuntimeError("the batch store is not open")
        return self._scratch

    # Files --------------------------------------------------------------------------

    async def _keep(self, conn: Any, record: FileRecord, written: Path) -> None:
        """Inside a transaction: insert the file's row and copy ``written`` in, then delete it."""
        if written.parent != self.scratch():
            raise ValueError(f"{written} is not in the store's scratch folder")
        await conn.execute(
            "INSERT INTO gpufleet_files (id, purpose, created_at, bytes, doc)"
            " VALUES (%s, %s, %s, %s, %s)",
            tables.file_row(record),
        )
        offset = n = 0
        while chunk := await asyncio.to_thread(_read_chunk, written, offset):
            await conn.execute(
                "INSERT INTO gpufleet_file_chunks (file_id, n, data) VALUES (%s, %s, %s)",
                (record.id, n, chunk),
            )
            offset += len(chunk)
            n += 1

    async def add_file(self, record: FileRecord, written: Path) -> None:
        """Keep ``written`` (in ``scratch()``) as the contents of ``record``."""
        async with self._db.use() as conn, conn.transaction():
            await self._keep(conn, record, written)
        await asyncio.to_thread(written.unlink)

    async def get_file(self, file_id: str) -> FileRecord | None:
        """The file, or None."""
        async with self._db.use() as conn:
            cur = await conn.execute(
                f"{tables.FILE_SELECT} FROM gpufleet_files WHERE id = %s", (file_id,)
            )
            row = await cur.fetchone()
        return None if row is None else tables.file_record(row)

    async def list_files(
        self, *, purpose: str | None, limit: int, after: str | None
    ) -> tuple[list[FileRecord], bool]:
        """Files newest first after the one named ``after``; and whether more follow."""
        sql, args = tables.page_query(
            tables.FILE_SELECT, "gpufleet_files", "%s", limit=limit, after=after, purpose=purpose
        )
        async with self._db.use() as conn:
            cur = await conn.execute(sql, args)
            return tables.page(await cur.fetchall(), limit, tables.file_record)

    async def delete_file(self, file_id: str) -> bool:
        """Delete the file and its contents; False when there was none."""
        async with self._db.use() as conn:
            cur = await conn.execute("DELETE FROM gpufleet_files WHERE id = %s", (file_id,))
            return bool(cur.rowcount)

    async def read_file(self, file_id: str) -> AsyncGenerator[bytes, None]:
        """The file's contents in chunks (``FileNotFoundError`` when there is none)."""
        if await self.get_file(file_id) is None:
            raise FileNotFoundError(file_id)
        n = 0
        while True:
            # One chunk per query: the connection is not held between chunks.
            async with self._io.use() as conn:
                cur = await conn.execute(
                    "SELECT data FROM gpufleet_file_chunks WHERE file_id = %s AND n = %s",
                    (file_id, n),
                )
                row = await cur.fetchone()
            if row is None:
                return
            yield bytes(row[0])
            n += 1

    async def stored_bytes(self) -> int:
        """Bytes of every file kept."""
        async with self._db.use() as conn:
            cur = await conn.execute("SELECT coalesce(sum(bytes), 0) FROM gpufleet_files")
            row = await cur.fetchone()
        return int(row[0])

    # Batches ------------------------------------------------------------------------

    async def add_batch(self, record: BatchRecord) -> None:
        """Keep a new batch."""
        async with self._db.use() as conn:
            await conn.execute(
                "INSERT INTO gpufleet_batches"
                " (id, status, input_file_id, created_at, completed, failed, doc)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                tables.batch_row(record),
            )

    async def _get_batch(
        self, conn: Any, batch_id: str, *, lock: bool = False
    ) -> BatchRecord | None:
        sql = f"{tables.BATCH_SELECT} FROM gpufleet_batches WHERE id = %s"
        cur = await conn.execute(sql + (" FOR UPDATE" if lock else ""), (batch_id,))
        row = await cur.fetchone()
        return None if row is None else tables.batch_record(row)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch, or None."""
        async with self._db.use() as conn:
            return await self._get_batch(conn, batch_id)

    async def list_batches(
        self, *, limit: int, after: str | None
    ) -> tuple[list[BatchRecord], bool]:
        """Batches newest first after the one named ``after``; and whether more follow."""
        sql, args = tables.page_query(
            tables.BATCH_SELECT, "gpufleet_batches", "%s", limit=limit, after=after
        )
        async with self._db.use() as conn:
            cur = await conn.execute(sql, args)
            return tables.page(await cur.fetchall(), limit, tables.batch_record)

    async def _set(self, conn: Any, batch_id: str, fields: dict[str, Any]) -> BatchRecord | None:
        """Inside a transaction: set ``fields`` of the batch (row locked) and return it."""
        record = await self._get_batch(conn, batch_id, lock=True)
        if record is None:
            return None
        tables.changed(record, fields)
        await conn.execute(
            "UPDATE gpufleet_batches SET status = %s, completed = %s, failed = %s, doc = %s"
            " WHERE id = %s",
            (*tables.batch_changes(record), batch_id),
        )
        return record

    async def update_batch(self, batch_id: str, **fields: Any) -> BatchRecord | None:
        """Set ``fields`` of the batch; the batch as it is now, or None."""
        async with self._db.use() as conn, conn.transaction():
            return await self._set(conn, batch_id, fields)

    async def unfinished_batches(self) -> list[BatchRecord]:
        """Batches still to run, finalize or cancel, oldest first."""
        async with self._db.use() as conn:
            cur = await conn.execute(
                f"{tables.BATCH_SELECT} FROM gpufleet_batches WHERE status = ANY(%s) ORDER BY seq",
                (sorted(UNFINISHED),),
            )
            return [tables.batch_record(r) for r in await cur.fetchall()]

    async def batch_counts(self) -> dict[str, int]:
        """How many batches are kept in each status."""
        async with self._db.use() as conn:
            cur = await conn.execute(
                "SELECT status, count(*) FROM gpufleet_batches GROUP BY status"
            )
            return {row[0]: int(row[1]) for row in await cur.fetchall()}

    async def file_in_use(self, file_id: str) -> bool:
        """True when an unfinished batch reads ``file_id``."""
        async with self._db.use() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM gpufleet_batches WHERE input_file_id = %s AND status = ANY(%s)"
                " LIMIT 1",
                (file_id, sorted(UNFINISHED)),
            )
            return await cur.fetchone() is not None

    # Results ------------------------------------------------------------------------

    async def add_results(self, batch_id: str, rows: Sequence[ResultRow]) -> None:
        """Record results in one transaction; a ``custom_id`` already there stays as it was."""
        if not rows:
            return
        async with self._db.use() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO gpufleet_results (batch_id, custom_id, line, ok, doc)"
                " SELECT %s, * FROM unnest(%s::text[], %s::bigint[], %s::boolean[], %s::bytea[])"
                " ON CONFLICT DO NOTHING RETURNING ok",
                (
                    batch_id,
                    [r.custom_id for r in rows],
                    [r.line for r in rows],
                    [r.ok for r in rows],
                    [r.doc for r in rows],
                ),
            )
            inserted = [bool(r[0]) for r in await cur.fetchall()]
            ok = sum(inserted)
            failed = len(inserted) - ok
            if inserted:
                await conn.execute(
                    "UPDATE gpufleet_batches SET completed = completed + %s,"
                    " failed = failed + %s WHERE id = %s",
                    (ok, failed, batch_id),
                )

    async def result_ids(self, batch_id: str) -> set[str]:
        """The ``custom_id`` s of the batch that have a result."""
        async with self._db.use() as conn:
            cur = await conn.execute(
                "SELECT custom_id FROM gpufleet_results WHERE batch_id = %s", (batch_id,)
            )
            return {row[0] for row in await cur.fetchall()}

    async def results_page(self, batch_id: str, *, after_line: int, limit: int) -> list[ResultRow]:
        """Results of the batch in input order, from the line after ``after_line``."""
        async with self._db.use() as conn:
            cur = await conn.execute(
                "SELECT custom_id, line, ok, doc FROM gpufleet_results"
                " WHERE batch_id = %s AND line > %s ORDER BY line LIMIT %s",
                (batch_id, after_line, limit),
            )
            return [tables.result_row(r) for r in await cur.fetchall()]

    async def finish_batch(
        self, batch_id: str, outputs: Sequence[tuple[FileRecord, Path]], **fields: Any
    ) -> BatchRecord | None:
        """Copy ``outputs`` in and set ``fields`` in one transaction."""
        async with self._db.use() as conn, conn.transaction():
            for record, written in outputs:
                await self._keep(conn, record, written)
            result = await self._set(conn, batch_id, fields)
        for _, written in outputs:
            await asyncio.to_thread(_unlink, written)
        return result

    async def sweep(self, before: int) -> tuple[int, int]:
        """Delete finished batches and files created before ``before``; (batches, files)."""
        async with self._db.use() as conn:
            async with conn.transaction():
                cur = await conn.execute(
                    "DELETE FROM gpufleet_batches WHERE created_at < %s AND status = ANY(%s)"
                    " RETURNING id",
                    (before, sorted(FINISHED)),
                )
                old = [row[0] for row in await cur.fetchall()]
                if old:
                    await conn.execute(
                        "DELETE FROM gpufleet_results WHERE batch_id = ANY(%s)", (old,)
                    )
            cur = await conn.execute(
                "DELETE FROM gpufleet_files WHERE created_at < %s AND id NOT IN"
                " (SELECT input_file_id FROM gpufleet_batches WHERE status = ANY(%s))"
                " RETURNING id",
                (before, sorted(UNFINISHED)),
            )
            files = await cur.fetchall()
        return len(old), len(files)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
