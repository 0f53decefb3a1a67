"""A store opened at a relative path (``--batch-store ./store``) keeps uploads.

The API writes scratch files by absolute path; the store once compared them with its own
relative scratch folder and refused every upload with a 500.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from gpufleet.batches.records import PURPOSE_BATCH, FileRecord
from gpufleet.batches.sqlite import SqliteStore


async def test_a_relative_store_path_keeps_an_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SqliteStore("store")
    await store.open()
    try:
        fd, name = tempfile.mkstemp(dir=store.scratch())
        with os.fdopen(fd, "wb") as f:
            f.write(b"{}\n")
        written = tmp_path / "store" / "tmp" / os.path.basename(name)  # as the API has it
        await store.add_file(FileRecord("file-a", PURPOSE_BATCH, "in.jsonl", 3, 100), written)
        got = await store.get_file("file-a")
        assert got is not None
        assert got.bytes == 3
    finally:
        await store.aclose()
