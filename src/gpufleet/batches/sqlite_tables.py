"""``SqliteTables``: the SQL of the embedded ``BatchStore``, on one connection.

Every method here blocks: ``SqliteStore`` runs each on its database thread, the only
thread that ever uses the connection. Files, batches and results are tables in
``batches.sqlite3`` (WAL); a file's contents are renamed into ``files/`` (fsynced) before
the row that names them commits, and what a crash leaves between the two is deleted at
``open``. A change of more than one row is one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from gpufleet.batches import tables
from gpufleet.batches.records import FINISHED, UNFINISHED, BatchRecord, FileRecord, ResultRow

DB_NAME: Final = "batches.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_line ON results (batch_id, line);
"""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqliteTables:
    """Files, batches and results in the SQLite database under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()  # scratch paths are compared with tmp_dir
        self.files_dir = self.root / "files"
        self.tmp_dir = self.root / "tmp"
        self._conn: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        """True between ``open`` and ``close``."""
        return self._conn is not None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the batch store is not open")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` when the block raises."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def open(self) -> None:
        for folder in (self.root, self.files_dir, self.tmp_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = sqlite3.connect(self.root / DB_NAME, isolation_level=None, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        for leftover in self.tmp_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        known = {row["id"] for row in conn.execute("SELECT id FROM files")}
        for path in self.files_dir.iterdir():
            if path.name not in known:  # renamed in, then the process died before its row
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def keep(self, record: FileRecord, written: Path) -> None:
        """Rename ``written`` into ``files/`` (fsynced), then insert its row."""
        if written.parent != self.tmp_dir:
            raise ValueError(f"{written} is not in the store's scratch folder")
        os.replace(written, self.files_dir / record.id)
        _fsync_dir(self.files_dir)
        self.conn.execute(
            "INSERT INTO files (id, purpose, created_at, bytes, doc) VALUES (?, ?, ?, ?, ?)",
            tables.file_row(record),
        )

    def get_file(self, file_id: str) -> FileRecord | None:
        row = self.conn.execute(
            f"{tables.FILE_SELECT} FROM files WHERE id = ?", (file_id,)
        ).fetchone()
        return None if row is None else tables.file_record(row)

    def list_files(
        self, purpose: str | None, limit: int, after: str | None
    ) -> tuple[list[FileRecord], bool]:
        sql, args = tables.page_query(
            tables.FILE_SELECT, "files", "?", limit=limit, after=after, purpose=purpose
        )
        found = self.conn.execute(sql, args)
        return tables.page(found.fetchall(), limit, tables.file_record)

    def delete_file(self, file_id: str) -> bool:
        cur = self.conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        if not cur.rowcount:
            return False
        with contextlib.suppress(FileNotFoundError):
            (self.files_dir / file_id).unlink()
        return True

    def stored_bytes(self) -> int:
        return int(self.conn.execute("SELECT coalesce(sum(bytes), 0) FROM files").fetchone()[0])

    def add_batch(self, record: BatchRecord) -> None:
        self.conn.execute(
            "INSERT INTO batches (id, status, input_file_id, created_at, completed, failed, doc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            tables.batch_row(record),
        )

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        row = self.conn.execute(
            f"{tables.BATCH_SELECT} FROM batches WHERE id = ?", (batch_id,)
        ).fetchone()
        return None if row is None else tables.batch_record(row)

    def list_batches(self, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        sql, args = tables.page_query(tables.BATCH_SELECT, "batches", "?", limit=limit, after=after)
        found = self.conn.execute(sql, args)
        return tables.page(found.fetchall(), limit, tables.batch_record)

    def update_batch(self, batch_id: str, fields: Mapping[str, object]) -> BatchRecord | None:
        with self._transaction():
            return self._set(batch_id, fields)

    def _set(self, batch_id: str, fields: Mapping[str, object]) -> BatchRecord | None:
        """Inside a transaction: set ``fields`` of the batch and return it."""
        record = self.get_batch(batch_id)
        if record is None:
            return None
        tables.changed(record, fields)
        self.conn.execute(
            "UPDATE batches SET status = ?, completed = ?, failed = ?, doc = ? WHERE id = ?",
            (*tables.batch_changes(record), batch_id),
        )
        return record

    def unfinished_batches(self) -> list[BatchRecord]:
        marks = ", ".join("?" * len(UNFINISHED))
        found = self.conn.execute(
            f"{tables.BATCH_SELECT} FROM batches WHERE status IN ({marks}) ORDER BY seq",
            tuple(UNFINISHED),
        )
        return [tables.batch_record(r) for r in found]

    def batch_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, count(*) FROM batches GROUP BY status")
        return {row[0]: int(row[1]) for row in rows}

    def file_in_use(self, file_id: str) -> bool:
        marks = ", ".join("?" * len(UNFINISHED))
        row = self.conn.execute(
            f"SELECT 1 FROM batches WHERE input_file_id = ? AND status IN ({marks}) LIMIT 1",
            (file_id, *UNFINISHED),
        ).fetchone()
        return row is not None

    def add_results(self, batch_id: str, rows: Sequence[ResultRow]) -> None:
        ok = failed = 0
        with self._transaction() as conn:
            for row in rows:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO results (batch_id, custom_id, line, ok, doc)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (batch_id, row.custom_id, row.line, int(row.ok), row.doc),
                )
                if cur.rowcount == 1:
                    if row.ok:
                        ok += 1
                    else:
                        failed += 1
            if ok or failed:
                conn.execute(
                    "UPDATE batches SET completed = completed + ?, failed = failed + ?"
                    " WHERE id = ?",
                    (ok, failed, batch_id),
                )

    def result_ids(self, batch_id: str) -> set[str]:
        cur = self.conn.execute("SELECT custom_id FROM results WHERE batch_id = ?", (batch_id,))
        return {row[0] for row in cur}

    def results_page(self, batch_id: str, after_line: int, limit: int) -> list[ResultRow]:
        found = self.conn.execute(
            "SELECT custom_id, line, ok, doc FROM results WHERE batch_id = ? AND line > ?"
            " ORDER BY line LIMIT ?",
            (batch_id, after_line, limit),
        )
        return [tables.result_row(r) for r in found]

    def finish_batch(
        self,
        batch_id: str,
        outputs: Sequence[tuple[FileRecord, Path]],
        fields: Mapping[str, object],
    ) -> BatchRecord | None:
        with self._transaction():
            for record, written in outputs:
                self.keep(record, written)
            return self._set(batch_id, fields)

    def sweep(self, before: int) -> tuple[int, int]:
        conn = self.conn
        marks = ", ".join("?" * len(FINISHED))
        old = [
            row[0]
            for row in conn.execute(
                f"SELECT id FROM batches WHERE created_at < ? AND status IN ({marks})",
                (before, *FINISHED),
            )
        ]
        for batch_id in old:
            with self._transaction():
                conn.execute("DELETE FROM results WHERE batch_id = ?", (batch_id,))
                conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        marks = ", ".join("?" * len(UNFINISHED))
        files = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM files WHERE created_at < ? AND id NOT IN (SELECT input_file_id"
                f" FROM batches WHERE status IN ({marks}))",
                (before, *UNFINISHED),
            )
        ]
        for file_id in files:
            self.delete_file(file_id)
        return len(old), len(files)


__all__ = ["DB_NAME", "SqliteTables"]
