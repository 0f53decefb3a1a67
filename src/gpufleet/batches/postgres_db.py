"""What the PostgreSQL batch store stands on: its tables, one connection used by one call
at a time, and files' contents copied in as chunks.

The tables are prefixed ``gpufleet_`` and created by ``create_tables`` under an advisory
lock (routers starting together do not race). A file's contents are rows of
``gpufleet_file_chunks``, ``CHUNK`` bytes each, deleted with the file's row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow

#: A psycopg connection whose rows are tuples (its default).
PgConnection: TypeAlias = "AsyncConnection[TupleRow]"

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


class Connection:
    """One psycopg connection, used by one call at a time, opened again when broken."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: PgConnection | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[PgConnection]:
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
        """Close the connection (the next ``use`` opens it again)."""
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


def require_driver() -> None:
    """Raise ``RuntimeError`` saying how to install psycopg when it is missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "a PostgreSQL batch store needs psycopg: pip install 'gpufleet[postgres]'"
        ) from None


async def create_tables(conn: PgConnection) -> None:
    """Create the tables that are missing, one router at a time."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        await conn.execute(_SCHEMA)


async def copy_in(conn: PgConnection, file_id: str, path: Path) -> None:
    """Copy the file at ``path`` into ``file_id``'s chunks (inside the caller's transaction)."""
    offset = n = 0
    while chunk := await asyncio.to_thread(_read_chunk, path, offset):
        await conn.execute(
            "INSERT INTO gpufleet_file_chunks (file_id, n, data) VALUES (%s, %s, %s)",
            (file_id, n, chunk),
        )
        offset += len(chunk)
        n += 1


async def read_chunks(io: Connection, file_id: str) -> AsyncIterator[bytes]:
    """``file_id``'s contents, chunk by chunk (nothing when it has none)."""
    n = 0
    while True:
        # One chunk per query: the connection is not held between chunks.
        async with io.use() as conn:
            cur = await conn.execute(
                "SELECT data FROM gpufleet_file_chunks WHERE file_id = %s AND n = %s",
                (file_id, n),
            )
            row = await cur.fetchone()
        if row is None:
            return
        yield bytes(row[0])
        n += 1


def _read_chunk(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(CHUNK)


__all__ = [
    "CHUNK",
    "SCHEMES",
    "Connection",
    "PgConnection",
    "copy_in",
    "create_tables",
    "is_postgres_url",
    "read_chunks",
    "require_driver",
]
