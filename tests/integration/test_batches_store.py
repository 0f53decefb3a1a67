"""Both BatchStores (SQLite; PostgreSQL on a real server the test starts): files kept
atomically, one result per custom_id (also across a restart), finish all at once, sweep."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gpufleet.batches.postgres import PostgresStore
from gpufleet.batches.records import (
    COMPLETED,
    IN_PROGRESS,
    PURPOSE_BATCH,
    PURPOSE_OUTPUT,
    BatchRecord,
    FileRecord,
    ResultRow,
)
from gpufleet.batches.sqlite import SqliteStore
from gpufleet.batches.store import BatchStore
from tests._postgres import new_database, running_postgres

#: Makes a new store object on the same storage each call.
Opener = Callable[[], BatchStore]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Makes stores over one storage: a directory, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "store")
    url = request.getfixturevalue("postgres_url")
    db = new_database(url, "t" + os.urandom(6).hex())
    return lambda: PostgresStore(db)


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[BatchStore]:
    s: BatchStore = opener()
    await s.open()
    yield s
    await s.aclose()


def _duplicate_error(store: BatchStore) -> tuple[type[Exception], ...]:
    if isinstance(store, PostgresStore):
        import psycopg

        return (psycopg.errors.UniqueViolation,)
    return (sqlite3.IntegrityError,)


def _scratch_file(store: BatchStore, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(dir=store.scratch())
    os.write(fd, data)
    os.close(fd)
    return Path(name)


async def _add_file(store: BatchStore, file_id: str, data: bytes, created: int = 100) -> None:
    record = FileRecord(file_id, PURPOSE_BATCH, "in.jsonl", len(data), created, lines=1)
    await store.add_file(record, _scratch_file(store, data))


def _batch(batch_id: str, file_id: str = "file-a", created: int = 100) -> BatchRecord:
    return BatchRecord(batch_id, "/predict", file_id, "24h", IN_PROGRESS, created, created + 86400)


async def test_files_are_kept_listed_read_and_deleted(store: BatchStore) -> None:
    await _add_file(store, "file-a", b"a" * 3_000_000)
    await _add_file(store, "file-b", b"bb")
    got = await store.get_file("file-a")
    assert got is not None
    assert got.bytes == 3_000_000
    assert [c async for c in store.read_file("file-b")] == [b"bb"]
    assert len(b"".join([c async for c in store.read_file("file-a")])) == 3_000_000
    files, more = await store.list_files(purpose=None, limit=1, after=None)
    assert [f.id for f in files] == ["file-b"]
    assert more
    files, more = await store.list_files(purpose=None, limit=1, after="file-b")
    assert [f.id for f in files] == ["file-a"]
    assert not more
    assert await store.stored_bytes() == 3_000_002
    assert await store.delete_file("file-a")
    assert not await store.delete_file("file-a")
    if isinstance(store, SqliteStore):
        assert not (store.files_dir / "file-a").exists()
    with pytest.raises(FileNotFoundError):
        [c async for c in store.read_file("file-a")]
    # An id that walks out of the folder names no row, so nothing is opened.
    with pytest.raises(FileNotFoundError):
        [c async for c in store.read_file("../batches.sqlite3")]


async def test_a_result_is_recorded_once_per_custom_id(store: BatchStore) -> None:
    await _add_file(store, "file-a", b"x")
    await store.add_batch(_batch("batch_1"))
    rows = [ResultRow("a", 1, True, b"A1"), ResultRow("b", 2, False, b"B1")]
    await store.add_results("batch_1", rows)
    # The same custom_ids again (a request sent twice around a crash): ignored.
    await store.add_results(
        "batch_1", [ResultRow("a", 1, True, b"A2"), ResultRow("c", 3, True, b"C")]
    )
    record = await store.get_batch("batch_1")
    assert record is not None
    assert (record.completed, record.failed) == (2, 1)
    assert await store.result_ids("batch_1") == {"a", "b", "c"}
    page = await store.results_page("batch_1", after_line=0, limit=2)
    assert [(r.custom_id, r.doc) for r in page] == [("a", b"A1"), ("b", b"B1")]
    page = await store.results_page("batch_1", after_line=2, limit=2)
    assert [r.custom_id for r in page] == ["c"]


async def test_finish_keeps_outputs_and_state_together(store: BatchStore) -> None:
    await _add_file(store, "file-a", b"x")
    await store.add_batch(_batch("batch_1"))
    out = FileRecord("file-out", PURPOSE_OUTPUT, "o.jsonl", 3, 200, lines=1)
    record = await store.finish_batch(
        "batch_1",
        [(out, _scratch_file(store, b"o\n"))],
        status=COMPLETED,
        completed_at=200,
        output_file_id="file-out",
    )
    assert record is not None
    assert record.status == COMPLETED
    assert record.output_file_id == "file-out"
    assert await store.unfinished_batches() == []
    assert b"".join([c async for c in store.read_file("file-out")]) == b"o\n"
    # A row that cannot be inserted rolls the whole finish back: no state, no file.
    await store.add_batch(_batch("batch_2"))
    dup = FileRecord("file-out", PURPOSE_OUTPUT, "o.jsonl", 3, 200)
    with pytest.raises(_duplicate_error(store)):
        await store.finish_batch("batch_2", [(dup, _scratch_file(store, b"z\n"))], status=COMPLETED)
    again = await store.get_batch("batch_2")
    assert again is not None
    assert again.status == IN_PROGRESS


async def test_results_stay_once_across_a_restart(opener: Opener) -> None:
    first: BatchStore = opener()
    await first.open()
    await _add_file(first, "file-a", b"x")
    await first.add_batch(_batch("batch_1"))
    await first.add_results("batch_1", [ResultRow("a", 1, True, b"A1")])
    await first.aclose()
    # A new store on the same storage (the router started again after a kill -9): the
    # batch is still unfinished, its stored result is there, and the request sent again
    # (it was in flight at the crash) does not make a second result or count twice.
    second: BatchStore = opener()
    await second.open()
    try:
        assert [b.id for b in await second.unfinished_batches()] == ["batch_1"]
        assert await second.result_ids("batch_1") == {"a"}
        await second.add_results(
            "batch_1", [ResultRow("a", 1, True, b"A2"), ResultRow("b", 2, True, b"B")]
        )
        record = await second.get_batch("batch_1")
        assert record is not None
        assert (record.completed, record.failed) == (2, 0)
        page = await second.results_page("batch_1", after_line=0, limit=10)
        assert [(r.custom_id, r.doc) for r in page] == [("a", b"A1"), ("b", b"B")]
        assert b"".join([c async for c in second.read_file("file-a")]) == b"x"
    finally:
        await second.aclose()


async def test_open_drops_what_a_crash_left(tmp_path: Path) -> None:
    root = tmp_path / "store"
    first = SqliteStore(root)
    await first.open()
    await _add_file(first, "file-a", b"kept")
    half = _scratch_file(first, b"half-written upload")
    await first.aclose()
    (root / "files" / "file-orphan").write_bytes(b"renamed in, no row")
    second = SqliteStore(root)
    await second.open()
    try:
        assert not half.exists()
        assert not (root / "files" / "file-orphan").exists()
        assert (root / "files" / "file-a").read_bytes() == b"kept"
        with contextlib.closing(sqlite3.connect(root / "batches.sqlite3")) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        await second.aclose()


async def test_sweep_keeps_inputs_of_unfinished_batches(store: BatchStore) -> None:
    await _add_file(store, "file-old", b"x", created=10)
    await _add_file(store, "file-used", b"x", created=10)
    await _add_file(store, "file-new", b"x", created=1000)
    done = _batch("batch_done", "file-old", created=10)
    await store.add_batch(done)
    await store.update_batch("batch_done", status=COMPLETED)
    await store.add_results("batch_done", [ResultRow("a", 1, True, b"A")])
    await store.add_batch(_batch("batch_running", "file-used", created=10))
    assert await store.sweep(before=500) == (1, 1)
    assert await store.get_batch("batch_done") is None
    assert await store.result_ids("batch_done") == set()
    assert await store.get_file("file-old") is None
    assert await store.get_file("file-used") is not None
    assert await store.get_file("file-new") is not None
    assert await store.get_batch("batch_running") is not None


async def test_batches_list_newest_first_with_a_cursor(store: BatchStore) -> None:
    for i in range(5):
        await store.add_batch(_batch(f"batch_{i}"))
    page, more = await store.list_batches(limit=2, after=None)
    assert [b.id for b in page] == ["batch_4", "batch_3"]
    assert more
    page, more = await store.list_batches(limit=10, after="batch_3")
    assert [b.id for b in page] == ["batch_2", "batch_1", "batch_0"]
    assert not more
    await store.update_batch("batch_0", status=COMPLETED)
    assert await store.batch_counts() == {IN_PROGRESS: 4, COMPLETED: 1}


# Claims: which router runs a batch, when several share one store ----------------------


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One storage: a folder, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store")
    return new_database(request.getfixturevalue("postgres_url"), "t" + os.urandom(6).hex())


def _store_at(where: str) -> BatchStore:
    return PostgresStore(where) if where.startswith("postgresql") else SqliteStore(where)


async def test_a_batch_is_claimed_by_one_store_at_a_time(where: str) -> None:
    a, b = _store_at(where), _store_at(where)
    await a.open()
    await b.open()
    try:
        assert await a.claim("batch_1")
        assert await a.claim("batch_1")  # held already: still ours
        assert not await b.claim("batch_1")
        assert await b.claim("batch_2")
        assert not await a.claim("batch_2")
        await a.release("batch_1")
        assert await b.claim("batch_1")
        assert not await a.claim("batch_1")
        await b.aclose()  # a store that closes lets go of every claim it holds
        assert await a.claim("batch_1")
        assert await a.claim("batch_2")
    finally:
        await a.aclose()
        await b.aclose()


_HOLDER = """
import asyncio, sys
from gpufleet.batches.postgres import PostgresStore
from gpufleet.batches.sqlite import SqliteStore

async def main() -> None:
    where = sys.argv[1]
    store = PostgresStore(where) if where.startswith("postgresql") else SqliteStore(where)
    await store.open()
    assert await store.claim("batch_1")
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_claim_ends_with_a_holder_killed_9(where: str) -> None:
    # A router killed mid-batch (kill -9) must not keep its batches from the others.
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, where, stdout=asyncio.subprocess.PIPE
    )
    store = _store_at(where)
    await store.open()
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(60):
            assert (await holder.stdout.readline()).strip() == b"held"
        assert not await store.claim("batch_1")
        holder.kill()
        await holder.wait()
        async with asyncio.timeout(20):  # the server notices the closed connection
            while not await store.claim("batch_1"):  # noqa: ASYNC110 (polls the store)
                await asyncio.sleep(0.05)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await store.aclose()
