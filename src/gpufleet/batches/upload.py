"""``POST /v1/files``: a JSONL batch input, uploaded as multipart and checked line by
line as it arrives (``jsonl.LineChecker``), written to the store's scratch folder and
fsynced before the store keeps it; refused (``Refused``, OpenAI's shape) as soon as it
is over the file's or the store's size, or a line is wrong (its number in the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from aiohttp import BodyPartReader, web

from gpufleet.batches.jsonl import LineChecker, LineError
from gpufleet.batches.records import PURPOSE_BATCH, FileRecord, new_id
from gpufleet.batches.refusal import Refused
from gpufleet.batches.store import BatchStore
from gpufleet.config.router import RouterConfig

#: The largest multipart text field.
MAX_FIELD: Final = 1024
#: Bytes read from an upload per step.
UPLOAD_CHUNK: Final = 1 << 20
#: Room for the multipart framing and fields around the file itself.
FORM_OVERHEAD: Final = 64 * 1024


class FileUpload:
    """Takes batch input files into a ``BatchStore``, within the router's size limits."""

    def __init__(
        self, store: BatchStore, cfg: RouterConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.max_file_bytes = int(cfg.batch_max_file_mb * 2**20)
        self.max_store_bytes = int(cfg.batch_max_store_gb * 2**30)
        self._clock = clock

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /v1/files``: a JSONL batch input, checked line by line as it arrives."""
        if not request.content_type.startswith("multipart/"):
            raise Refused(400, "upload a file as multipart/form-data", param="file")
        length = request.content_length
        if length is not None and length > self.max_file_bytes + FORM_OVERHEAD:
            raise Refused(
                413,
                f"the file is larger than {self.cfg.batch_max_file_mb:g} MB",
                param="file",
                code="file_too_large",
            )
        stored = await self.store.stored_bytes()
        if stored >= self.max_store_bytes:
            raise self._store_full(stored)
        reader = await request.multipart()
        purpose: str | None = None
        received: tuple[Path, str, LineChecker, int] | None = None
        try:
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise Refused(400, "nested multipart bodies are not taken")
                if part.name == "file":
                    if received is not None:
                        raise Refused(400, "one file per upload", param="file")
                    received = await self._receive(part, stored)
                elif part.name == "purpose":
                    purpose = (await _read_field(part)).strip()
                else:
                    await _read_field(part)  # expires_after and the like: not kept
            if received is None:
                raise Refused(400, "the upload has no file part", param="file")
            if purpose != PURPOSE_BATCH:
                raise Refused(
                    400,
                    f"purpose must be {PURPOSE_BATCH!r} (this endpoint keeps batch inputs only)",
                    param="purpose",
                )
            path, filename, checker, size = received
            record = FileRecord(
                new_id("file-"),
                PURPOSE_BATCH,
                filename,
                size,
                int(self._clock()),
                lines=checker.lines,
                urls=checker.urls,
            )
            await self.store.add_file(record, path)
            received = None
        finally:
            if received is not None:
                await asyncio.to_thread(_unlink, received[0])
        return web.json_response(record.as_openai())

    async def _receive(
        self, part: BodyPartReader, stored: int
    ) -> tuple[Path, str, LineChecker, int]:
        """Write the file part to the scratch folder, checking each line; fsynced."""
        filename = (part.filename or "upload.jsonl")[:255]
        checker = LineChecker(
            max_lines=self.cfg.batch_max_lines, max_line_bytes=self.cfg.max_body_bytes
        )
        fd, name = await asyncio.to_thread(
            tempfile.mkstemp, dir=self.store.scratch(), prefix=".upload-"
        )
        path = Path(name)
        size = 0
        try:
            while chunk := await part.read_chunk(UPLOAD_CHUNK):
                size += len(chunk)
                if size > self.max_file_bytes:
                    raise Refused(
                        413,
                        f"the file is larger than {self.cfg.batch_max_file_mb:g} MB",
                        param="file",
                        code="file_too_large",
                    )
                if stored + size > self.max_store_bytes:
                    raise self._store_full(stored + size)
                await asyncio.to_thread(_check_and_write, fd, checker, chunk)
            await asyncio.to_thread(_finish, fd, checker)
        except LineError as exc:
            await asyncio.to_thread(_discard, fd, path)
            raise Refused(
                400, f"{filename}: {exc}", param="file", code=exc.code, line=exc.line
            ) from None
        except BaseException:
            await asyncio.to_thread(_discard, fd, path)
            raise
        return path, filename, checker, size

    def _store_full(self, stored: int) -> Refused:
        return Refused(
            413,
            f"the batch store is full ({stored} of {self.max_store_bytes} bytes): delete "
            "files or wait for the retention time",
            code="storage_limit",
        )


async def _read_field(part: BodyPartReader) -> str:
    """A small multipart text field (at most ``MAX_FIELD`` bytes)."""
    raw = b""
    while chunk := await part.read_chunk(MAX_FIELD + 1):
        raw += chunk
        if len(raw) > MAX_FIELD:
            raise Refused(400, f"form field {part.name!r} is too long")
    return raw.decode("utf-8", "replace")


def _check_and_write(fd: int, checker: LineChecker, chunk: bytes) -> None:
    checker.feed(chunk)
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _finish(fd: int, checker: LineChecker) -> None:
    checker.finish()
    os.fsync(fd)
    os.close(fd)


def _discard(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    _unlink(path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


__all__ = ["MAX_FIELD", "UPLOAD_CHUNK", "FileUpload"]
