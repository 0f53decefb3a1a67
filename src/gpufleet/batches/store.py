"""The ``BatchStore`` seam: where files, batches and results live.

``SqliteStore`` (``batches/sqlite.py``) is the embedded default: one SQLite database in
WAL mode beside a folder of file contents. A second backend (PostgreSQL, for several
routers sharing one store) implements the same methods. Every method may block on disk
or network, so each is a coroutine; implementations keep that work off the event loop.

The contract that makes ``kill -9`` safe: ``add_results`` records each ``custom_id`` of a
batch at most once (a second result for it is ignored), and ``finish_batch`` makes the
output files and the batch's final state visible together or not at all. A router runs
a batch only while it holds the batch's ``claim``, so routers sharing a store never run
one batch together, and the claim of a router that died is free at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, Protocol

from gpufleet.batches.records import BatchRecord, FileRecord, ResultRow


class BatchStore(Protocol):
    """Files, batches and per-request results, kept across restarts."""

    async def open(self) -> None:
        """Create or open the store; drop what a crash left half-made."""
        ...

    async def aclose(self) -> None:
        """Close the store (pending writes are done first)."""
        ...

    def scratch(self) -> Path:
        """A folder on the store's disk for files being written (renamed in by ``add_file``)."""
        ...

    # Files --------------------------------------------------------------------------

    async def add_file(self, record: FileRecord, written: Path) -> None:
        """Keep ``written`` (a fsynced file in ``scratch()``) as the contents of ``record``."""
        ...

    async def get_file(self, file_id: str) -> FileRecord | None:
        """The file, or None."""
        ...

    async def list_files(
        self, *, purpose: str | None, limit: int, after: str | None
    ) -> tuple[list[FileRecord], bool]:
        """Files newest first after the one named ``after``; and whether more follow."""
        ...

    async def delete_file(self, file_id: str) -> bool:
        """Delete the file and its contents; False when there was none."""
        ...

    def read_file(self, file_id: str) -> AsyncGenerator[bytes, None]:
        """The file's contents, in chunks.

        Raises:
            FileNotFoundError: no such file.
        """
        ...

    async def stored_bytes(self) -> int:
        """Bytes of every file kept."""
        ...

    # Batches ------------------------------------------------------------------------

    async def add_batch(self, record: BatchRecord) -> None:
        """Keep a new batch."""
        ...

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch (with its current counts), or None."""
        ...

    async def list_batches(
        self, *, limit: int, after: str | None
    ) -> tuple[list[BatchRecord], bool]:
        """Batches newest first after the one named ``after``; and whether more follow."""
        ...

    async def update_batch(self, batch_id: str, **fields: Any) -> BatchRecord | None:
        """Set ``fields`` of the batch; the batch as it is now, or None."""
        ...

    async def unfinished_batches(self) -> list[BatchRecord]:
        """Batches not yet completed, failed, expired or cancelled, oldest first."""
        ...

    async def batch_counts(self) -> dict[str, int]:
        """How many batches are kept in each status (statuses with none left out)."""
        ...

    async def file_in_use(self, file_id: str) -> bool:
        """True when an unfinished batch reads ``file_id``."""
        ...

    async def claim(self, batch_id: str) -> bool:
        """Take the right to run the batch; False while another router holds it. The claim
        ends at ``release``, at ``aclose``, or when this process dies (``batches/claims.py``)."""
        ...

    async def release(self, batch_id: str) -> None:
        """Give up the batch's claim (it has finished, or this router stops running it)."""
        ...

    # Results ------------------------------------------------------------------------

    async def add_results(self, batch_id: str, rows: Sequence[ResultRow]) -> None:
        """Record results; a ``custom_id`` already recorded for the batch is left as it was."""
        ...

    async def result_ids(self, batch_id: str) -> set[str]:
        """The ``custom_id`` s of the batch that have a result."""
        ...

    async def results_page(self, batch_id: str, *, after_line: int, limit: int) -> list[ResultRow]:
        """Results of the batch in input order, from the line after ``after_line``."""
        ...

    async def finish_batch(
        self, batch_id: str, outputs: Sequence[tuple[FileRecord, Path]], **fields: Any
    ) -> BatchRecord | None:
        """Keep ``outputs`` (written in ``scratch()``) and set ``fields``, all at once."""
        ...

    async def sweep(self, before: int) -> tuple[int, int]:
        """Delete finished batches and files created before ``before`` (Unix seconds).

        Inputs of unfinished batches stay. Returns (batches, files) deleted.
        """
        ...
