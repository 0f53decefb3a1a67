"""OpenAI's Files and Batches API on the router's endpoint (the routes are the router's own).

``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``; ``POST /v1/batches``,
``GET /v1/batches`` (``limit``, ``after``), ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``. Shapes, status values and error bodies
(``{"error": {"message", "type", "param", "code"}}``) are OpenAI's, so the official
``openai`` client works unchanged. Every other call under ``/v1/files`` and
``/v1/batches`` is answered here (404, or 405 with ``Allow``), never proxied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from aiohttp import BodyPartReader, web

from gpufleet import wire
from gpufleet._server import refuse_and_close
from gpufleet.batches.jsonl import LineChecker, LineError
from gpufleet.batches.records import (
    CANCELLED,
    CANCELLING,
    IN_PROGRESS,
    PURPOSE_BATCH,
    VALIDATING,
    BatchRecord,
    FileRecord,
    new_id,
)
from gpufleet.batches.runner import BatchRunner
from gpufleet.batches.store import BatchStore
from gpufleet.config.router import RouterConfig

#: The largest ``POST /v1/batches`` body and multipart text field.
MAX_JSON_BODY: Final = 64 * 1024
MAX_FIELD: Final = 1024
#: Bytes read from an upload per step.
UPLOAD_CHUNK: Final = 1 << 20
#: ``completion_window``: hours, as OpenAI's ``24h`` (1 to 720 hours are taken).
_WINDOW = re.compile(r"([1-9][0-9]{0,2})h")
#: Paths the router answers itself: never a batch's endpoint.
_OWN_PATHS: Final = ("/v1/files", "/v1/batches", "/admin", "/dashboard")
_OWN_EXACT: Final = frozenset({"/health", "/stats", "/metrics"})
#: Each path and the methods it takes (for 405 and ``Allow``).
_METHODS: Final = (
    (re.compile(r"/v1/files/?"), "GET, POST"),
    (re.compile(r"/v1/files/[^/]+/?"), "GET, DELETE"),
    (re.compile(r"/v1/files/[^/]+/content/?"), "GET"),
    (re.compile(r"/v1/batches/?"), "GET, POST"),
    (re.compile(r"/v1/batches/[^/]+/?"), "GET"),
    (re.compile(r"/v1/batches/[^/]+/cancel/?"), "POST"),
)


class _Refused(Exception):
    """An OpenAI-shaped error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        line: int | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {
            "message": message,
            "type": kind,
            "param": param,
            "code": code,
        }
        if line is not None:
            self.body["line"] = line

    def response(self) -> web.Response:
        return web.json_response({"error": self.body}, status=self.status)


def _not_found(what: str, ident: str, param: str = "id") -> _Refused:
    return _Refused(404, f"No such {what}: {ident!r}", param=param)


class BatchAPI:
    """The Files and Batches routes over a ``BatchStore`` and a ``BatchRunner``."""

    def __init__(
        self,
        store: BatchStore,
        runner: BatchRunner,
        cfg: RouterConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.runner = runner
        self.cfg = cfg
        self.max_file_bytes = int(cfg.batch_max_file_mb * 2**20)
        self.max_store_bytes = int(cfg.batch_max_store_gb * 2**30)
        self._clock = clock

    def register(self, app: web.Application) -> None:
        """Add the routes (before the proxy's catch-all)."""
        add = app.router.add_route
        add("POST", "/v1/files", self._guard(self.upload))
        add("GET", "/v1/files", self._guard(self.list_files))
        add("GET", "/v1/files/{id}", self._guard(self.get_file))
        add("DELETE", "/v1/files/{id}", self._guard(self.delete_file))
        add("GET", "/v1/files/{id}/content", self._guard(self.content))
        add("POST", "/v1/batches", self._guard(self.create))
        add("GET", "/v1/batches", self._guard(self.list_batches))
        add("GET", "/v1/batches/{id}", self._guard(self.get_batch))
        add("POST", "/v1/batches/{id}/cancel", self._guard(self.cancel))
        for prefix in ("/v1/files", "/v1/batches"):
            add("*", prefix, self.unknown)
            add("*", prefix + "/{tail:.*}", self.unknown)

    def _guard(self, handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                answer: web.StreamResponse = await handler(request)
            except _Refused as exc:
                answer = exc.response()
                if request.body_exists and not request.content.is_eof():
                    return await refuse_and_close(request, answer)
            return answer

        return guarded

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        """Anything else under /v1/files and /v1/batches: 405 for a known path, else 404."""
        path = request.path
        for pattern, allow in _METHODS:
            if pattern.fullmatch(path):
                answer = _Refused(405, f"{path} takes {allow}, not {request.method}").response()
                answer.headers["Allow"] = allow
                break
        else:
            answer = _Refused(404, f"no such route: {request.method} {path}").response()
        if request.body_exists and not request.content.is_eof():
            return await refuse_and_close(request, answer)
        return answer

    # Files --------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /v1/files``: a JSONL batch input, checked line by line as it arrives."""
        if not request.content_type.startswith("multipart/"):
            raise _Refused(400, "upload a file as multipart/form-data", param="file")
        length = request.content_length
        if length is not None and length > self.max_file_bytes + MAX_JSON_BODY:
            raise _Refused(
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
                    raise _Refused(400, "nested multipart bodies are not taken")
                if part.name == "file":
                    if received is not None:
                        raise _Refused(400, "one file per upload", param="file")
                    received = await self._receive(part, stored)
                elif part.name == "purpose":
                    purpose = (await _read_field(part)).strip()
                else:
                    await _read_field(part)  # expires_after and the like: not kept
            if received is None:
                raise _Refused(400, "the upload has no file part", param="file")
            if purpose != PURPOSE_BATCH:
                raise _Refused(
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
                    raise _Refused(
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
            raise _Refused(
                400, f"{filename}: {exc}", param="file", code=exc.code, line=exc.line
            ) from None
        except BaseException:
            await asyncio.to_thread(_discard, fd, path)
            raise
        return path, filename, checker, size

    def _store_full(self, stored: int) -> _Refused:
        return _Refused(
            413,
            f"the batch store is full ({stored} of {self.max_store_bytes} bytes): delete "
            "files or wait for the retention time",
            code="storage_limit",
        )

    async def list_files(self, request: web.Request) -> web.Response:
        """``GET /v1/files`` (``purpose``, ``limit``, ``after``), newest first."""
        limit = _limit(request, default=100, most=10_000)
        files, more = await self.store.list_files(
            purpose=request.query.get("purpose"), limit=limit, after=request.query.get("after")
        )
        return _page([f.as_openai() for f in files], more)

    async def _file(self, request: web.Request) -> FileRecord:
        file_id = request.match_info["id"]
        record = await self.store.get_file(file_id)
        if record is None:
            raise _not_found("File", file_id)
        return record

    async def get_file(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{id}``."""
        return web.json_response((await self._file(request)).as_openai())

    async def delete_file(self, request: web.Request) -> web.Response:
        """``DELETE /v1/files/{id}`` (not while an unfinished batch reads it)."""
        record = await self._file(request)
        if await self.store.file_in_use(record.id):
            raise _Refused(409, f"file {record.id} is the input of an unfinished batch")
        await self.store.delete_file(record.id)
        return web.json_response({"id": record.id, "object": "file", "deleted": True})

    async def content(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/files/{id}/content``: the file as it was stored."""
        record = await self._file(request)
        answer = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        answer.content_length = record.bytes
        chunks = self.store.read_file(record.id)
        try:
            first = await anext(chunks, b"")
        except FileNotFoundError:
            raise _not_found("File", record.id) from None
        await answer.prepare(request)
        try:
            if first:
                await answer.write(first)
            async for chunk in chunks:
                await answer.write(chunk)
        finally:
            await chunks.aclose()
        await answer.write_eof()
        return answer

    # Batches ------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/batches``."""
        body = await _read_json(request)
        input_file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        metadata = body.get("metadata")
        if not isinstance(input_file_id, str):
            raise _Refused(400, "input_file_id is required", param="input_file_id")
        if not isinstance(endpoint, str) or not _is_endpoint(endpoint):
            raise _Refused(
                400,
                "endpoint must be a route the fleet serves, such as /v1/chat/completions, "
                "/v1/embeddings, /v1/images/generations or /predict",
                param="endpoint",
            )
        match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
        if match is None or int(match.group(1)) > 720:
            raise _Refused(
                400,
                "completion_window must be such as '24h' (1h to 720h)",
                param="completion_window",
            )
        _check_metadata(metadata)
        file = await self.store.get_file(input_file_id)
        if file is None:
            raise _not_found("File", input_file_id, "input_file_id")
        if file.purpose != PURPOSE_BATCH:
            raise _Refused(
                400,
                f"file {file.id} has purpose {file.purpose!r}, not 'batch'",
                param="input_file_id",
            )
        for url, line in sorted(file.urls.items(), key=lambda kv: kv[1]):
            if url != endpoint:
                raise _Refused(
                    400,
                    f"line {line}: url {url!r} is not the batch's endpoint {endpoint!r}",
                    param="input_file_id",
                    code="mismatched_url",
                    line=line,
                )
        if file.lines > self.cfg.batch_max_lines:
            raise _Refused(
                400,
                f"the file holds {file.lines} requests; a batch takes at most "
                f"{self.cfg.batch_max_lines}",
                param="input_file_id",
                code="too_many_requests",
            )
        now = int(self._clock())
        record = BatchRecord(
            id=new_id("batch_"),
            endpoint=endpoint,
            input_file_id=file.id,
            completion_window=window,  # type: ignore[arg-type]
            status=VALIDATING,
            created_at=now,
            expires_at=now + int(match.group(1)) * 3600,
            total=file.lines,
            metadata=metadata,
        )
        await self.store.add_batch(record)
        self.runner.launch(record)
        return web.json_response(record.as_openai())

    async def list_batches(self, request: web.Request) -> web.Response:
        """``GET /v1/batches`` (``limit`` 1..100, default 20; ``after``), newest first."""
        limit = _limit(request, default=20, most=100)
        batches, more = await self.store.list_batches(limit=limit, after=request.query.get("after"))
        return _page([b.as_openai() for b in batches], more)

    async def _batch(self, request: web.Request) -> BatchRecord:
        batch_id = request.match_info["id"]
        record = await self.store.get_batch(batch_id)
        if record is None:
            raise _not_found("Batch", batch_id)
        return record

    async def get_batch(self, request: web.Request) -> web.Response:
        """``GET /v1/batches/{id}``."""
        return web.json_response((await self._batch(request)).as_openai())

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/batches/{id}/cancel``: stop sending; finished results are kept."""
        record = await self._batch(request)
        if record.status in (CANCELLING, CANCELLED):
            return web.json_response(record.as_openai())
        if record.status not in (VALIDATING, IN_PROGRESS):
            raise _Refused(
                409, f"batch {record.id} is {record.status}: only a running batch can be cancelled"
            )
        cancelled = await self.runner.cancel(record.id)
        if cancelled is None:
            raise _not_found("Batch", record.id)
        return web.json_response(cancelled.as_openai())


def _is_endpoint(path: str) -> bool:
    """A path the batch may send to: any route but the router's own."""
    if not path.startswith("/") or len(path) > 512 or not (path.isascii() and path.isprintable()):
        return False
    if " " in path or "?" in path or "#" in path or path in _OWN_EXACT:
        return False
    return not any(path == p or path.startswith(p + "/") for p in _OWN_PATHS)


def _check_metadata(metadata: Any) -> None:
    """OpenAI's bounds: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise _Refused(400, "metadata must be an object of at most 16 pairs", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise _Refused(
                400,
                "metadata keys are strings of up to 64 characters, values up to 512",
                param="metadata",
            )


def _limit(request: web.Request, *, default: int, most: int) -> int:
    text = request.query.get("limit")
    if text is None:
        return default
    try:
        limit = int(text)
    except ValueError:
        raise _Refused(400, "limit must be a whole number", param="limit") from None
    if not 1 <= limit <= most:
        raise _Refused(400, f"limit must be in 1..{most}", param="limit")
    return limit


def _page(data: list[dict[str, Any]], more: bool) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


async def _read_json(request: web.Request) -> dict[str, Any]:
    """A JSON object body of at most ``MAX_JSON_BODY`` bytes."""
    length = request.content_length
    if length is not None and length > MAX_JSON_BODY:
        raise _Refused(413, f"the body is larger than {MAX_JSON_BODY} bytes")
    raw = b""
    while chunk := await request.content.read(MAX_JSON_BODY + 1 - len(raw)):
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise _Refused(413, f"the body is larger than {MAX_JSON_BODY} bytes")
    try:
        data = wire.decode_json(raw)
    except ValueError:
        raise _Refused(400, "the body must be JSON") from None
    if not isinstance(data, dict):
        raise _Refused(400, "the body must be a JSON object")
    return data


async def _read_field(part: BodyPartReader) -> str:
    """A small multipart text field (at most ``MAX_FIELD`` bytes)."""
    raw = b""
    while chunk := await part.read_chunk(MAX_FIELD + 1):
        raw += chunk
        if len(raw) > MAX_FIELD:
            raise _Refused(400, f"form field {part.name!r} is too long")
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
