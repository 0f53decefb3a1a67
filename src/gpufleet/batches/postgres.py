"""``PostgresStore``: the ``BatchStore`` in a PostgreSQL database (``--batch-store postgresql://…``).

For fleets that outgrow one machine: files, batches, results and the files' contents all
live in the database (contents as 1 MiB ``bytea`` chunks), so nothing of a batch is kept
on the router's disk but the scratch folder uploads and outputs are written to before
they are copied in. The tables, the connections and the chunks are ``postgres_db``.

The driver is psycopg 3 (the ``postgres`` extra), used through its asyncio connection:
the event loop never waits on the network. Two connections: one for every change and
lookup, one that streams file contents, so a long download never delays the recording
of results; a third holds the claims of the batches this router runs (session advisory
locks, ``batches/claims.py``), so they end with it. Each is used by one call at a time
(an ``asyncio.Lock``); a broken one is opened again at its next use.

The exactly-once contract holds as with SQLite: ``results`` has ``(batch_id,
custom_id)`` as its key and a second result is ignored (``ON CONFLICT DO NOTHING``);
the counts move only by the rows actually inserted, in the same transaction; and
``finish_batch`` copies the outputs in and sets the final state in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from gpufleet.batches import postgres_db, tables
from gpufleet.batches.postgres_db import PgConnection, is_postgres_url
from gpufleet.batches.records import FINISHED, UNFINISHED, BatchRecord, FileRecord, ResultRow

log = logging.getLogger("gpufleet.batches")

#: The first key of every advisory lock gpufleet takes ("gp"), the second the batch id's
#: hash: apart from other applications' locks in the same database.
_LOCK_SPACE = 0x6770


class PostgresStore:
    """Files, batches, results and file contents in the PostgreSQL database at ``url``."""

    def __init__(self, url: str) -> None:
        if not is_postgres_url(url):
            raise ValueError(f"not a PostgreSQL URL: {url!r}")
        self.url = url
        self._db = postgres_db.Connection(url)
        self._io = postgres_db.Connection(url)
        self._locks = postgres_db.Connection(url)
        #: Claims held, and the connection that holds them (a new one holds none).
        self._held: set[str] = set()
        self._held_on: object | None = None
        self._scratch: Path | None = None

    # Lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables when missing; make a scratch folder for files being written."""
        postgres_db.require_driver()
        self._scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="gpufleet-batches-"))
        async with self._db.use() as conn:
            await postgres_db.create_tables(conn)

    async def aclose(self) -> None:
        """Close both connections and remove the scratch folder."""
        await self._db.aclose()
        await self._io.aclose()
        await self._locks.aclose()  # the claims end with their session
        self._held.clear()
        if self._scratch is not None:
            await asyncio.to_thread(shutil.rmtree, self._scratch, True)
            self._scratch = None

    async def claim(self, batch_id: str) -> bool:
        """Take the batch's claim (an advisory lock of this store's claim session); False
        while another session holds it."""
        async with self._locks.use() as conn:
            if conn is not self._held_on:  # opened again: the old session's locks are gone
                if self._held:
                    log.warning(
                        "the batch store's claim connection was lost: %d batch claim(s) with"
                        " it; another router may take those batches over",
                        len(self._held),
                    )
                self._held.clear()
                self._held_on = conn
            if batch_id in self._held:
                return True
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_SPACE, batch_id)
            )
            row = await cur.fetchone()
            if row is None or not row[0]:
                return False
            self._held.add(batch_id)
            return True

    async def release(self, batch_id: str) -> None:
        """Give up the batch's claim."""
        if batch_id not in self._held:
            return
        async with self._locks.use() as conn:
            if conn is self._held_on:
                await conn.execute(
                    "SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_SPACE, batch_id)
                )
            self._held.discard(batch_id)

    def scratch(self) -> Path:
        """A local folder where files are written before ``add_file``/``finish_batch``."""
        if self._scratch is None:
            raise RuntimeError("the batch store is not open")
        return self._scratch

    # Files --------------------------------------------------------------------------

    async def _keep(self, conn: PgConnection, record: FileRecord, written: Path) -> None:
        """Inside a transaction: insert the file's row and copy ``written`` in, then delete it."""
        if written.parent != self.scratch():
            raise ValueError(f"{written} is not in the store's scratch folder")
        await conn.execute(
            "INSERT INTO gpufleet_files (id, purpose, created_at, bytes, doc)"
            " VALUES (%s, %s, %s, %s, %s)",
            tables.file_row(record),
        )
        await postgres_db.copy_in(conn, record.id, written)

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
        async for chunk in postgres_db.read_chunks(self._io, file_id):
            yield chunk

    async def stored_bytes(self) -> int:
        """Bytes of every file kept."""
        async with self._db.use() as conn:
            cur = await conn.execute("SELECT coalesce(sum(bytes), 0) FROM gpufleet_files")
            row = await cur.fetchone()
        assert row is not None  # an aggregate always answers one row
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
        self, conn: PgConnection, batch_id: str, *, lock: bool = False
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

    async def _set(
        self, conn: PgConnection, batch_id: str, fields: dict[str, Any]
    ) -> BatchRecord | None:
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
            await asyncio.to_thread(written.unlink, missing_ok=True)
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


__all__ = ["PostgresStore", "is_postgres_url"]
