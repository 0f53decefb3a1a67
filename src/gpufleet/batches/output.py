"""Result lines and the output and error files a finished batch gets.

One line per ``custom_id``, OpenAI's shape::

    {"id": "batch_req_…", "custom_id": "…",
     "response": {"status_code": 200, "request_id": "…", "body": {…}}, "error": null}

2xx answers go to the output file, every other outcome to the error file (a 4xx or 5xx
answer keeps its ``response``; a request that got no answer has ``response: null`` and an
``error`` with ``code`` and ``message``). Both files follow the input's line order: they
are assembled from the stored results when the batch finishes, written in the store's
scratch folder (temp file, fsync) for ``BatchStore.finish_batch`` to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import msgspec

from gpufleet.batches.store import BatchStore

#: Results read from the store per query while a file is assembled.
PAGE: Final = 2000
#: Bytes gathered before one write to disk.
WRITE_BYTES: Final = 1 << 20


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def result_line(
    row_id: str,
    custom_id: str,
    *,
    status: int | None = None,
    request_id: str | None = None,
    body: bytes = b"",
    error: dict[str, Any] | None = None,
) -> bytes:
    """One output line (no newline); ``body`` is the raw answer, kept as JSON when it is."""
    head = {"id": row_id, "custom_id": custom_id}
    if status is None:
        return _dumps({**head, "response": None, "error": error})
    raw = _json_or_none(body)
    if raw is None:
        text = body.decode("utf-8", "replace") if body else None
        response = {"status_code": status, "request_id": request_id, "body": text}
        return _dumps({**head, "response": response, "error": error})
    # The answer's JSON goes in as it came (checked, not decoded and encoded again): it is
    # most of the line, and this runs on the event loop.
    start = _dumps({**head, "response": {"status_code": status, "request_id": request_id}})
    return b"".join((start[:-2], b',"body":', raw, b'},"error":', _dumps(error), b"}"))


def _json_or_none(body: bytes) -> bytes | None:
    """``body`` when it is one JSON value on one line (to embed as is), else None."""
    if not body:
        return None
    try:
        body.decode("utf-8")  # msgspec's Raw does not look inside strings
        msgspec.json.decode(body, type=msgspec.Raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    stripped = body.strip()
    if b"\n" in stripped or b"\r" in stripped:
        # Pretty-printed: one line per result, so re-encode it compactly.
        return json.dumps(json.loads(stripped), separators=(",", ":")).encode()
    return stripped


class _Sink:
    """One output file being written in the scratch folder (off the event loop)."""

    def __init__(self, folder: Path, prefix: str) -> None:
        fd, name = tempfile.mkstemp(dir=folder, prefix=prefix)
        self.fd = fd
        self.path = Path(name)
        self.lines = 0
        self.bytes = 0
        self._buf: list[bytes] = []
        self._buffered = 0

    def add(self, doc: bytes) -> bool:
        """Buffer one line; True when the buffer should be written."""
        self._buf.append(doc)
        self._buf.append(b"\n")
        self.lines += 1
        self._buffered += len(doc) + 1
        return self._buffered >= WRITE_BYTES

    def write(self) -> None:
        """Write the buffer (blocking)."""
        data = b"".join(self._buf)
        self._buf.clear()
        self._buffered = 0
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.bytes += len(data)

    def close(self) -> None:
        """Write the rest, fsync and close (blocking)."""
        self.write()
        os.fsync(self.fd)
        os.close(self.fd)

    def discard(self) -> None:
        """Close and delete (blocking)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def assemble(
    store: BatchStore, batch_id: str, extra_errors: Iterable[tuple[int, bytes]] = ()
) -> tuple[_Sink, _Sink]:
    """The batch's output and error files, from its stored results in line order.

    ``extra_errors`` are (line, doc) of requests that have no stored result (expired
    ones), merged in by line. The sinks are closed (fsynced); the caller keeps or
    discards them.
    """
    folder = store.scratch()
    out = await asyncio.to_thread(_Sink, folder, ".out-")
    err = await asyncio.to_thread(_Sink, folder, ".err-")
    extra = sorted(extra_errors)
    k = 0
    try:
        after = 0
        while True:
            rows = await store.results_page(batch_id, after_line=after, limit=PAGE)
            for row in rows:
                while k < len(extra) and extra[k][0] < row.line:
                    if err.add(extra[k][1]):
                        await asyncio.to_thread(err.write)
                    k += 1
                if (out if row.ok else err).add(row.doc):
                    await asyncio.to_thread((out if row.ok else err).write)
            if len(rows) < PAGE:
                break
            after = rows[-1].line
        for _, doc in extra[k:]:
            if err.add(doc):
                await asyncio.to_thread(err.write)
        await asyncio.to_thread(out.close)
        await asyncio.to_thread(err.close)
    except BaseException:
        await asyncio.to_thread(out.discard)
        await asyncio.to_thread(err.discard)
        raise
    return out, err
