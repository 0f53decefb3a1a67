"""OpenAI's Files and Batches API on the router's endpoint (the routes are the router's own).

``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``; ``POST /v1/batches``,
``GET /v1/batches`` (``limit``, ``after``), ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``. Shapes, status values and error bodies
(``{"error": {"message", "type", "param", "code"}}``) are OpenAI's, so the official
``openai`` client works unchanged. Every other call under ``/v1/files`` and
``/v1/batches`` is answered here (404, or 405 with ``Allow``), never proxied. An upload
is taken by ``upload.FileUpload``; refusals are ``refusal.Refused``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from gpufleet._server import refuse_and_close
from gpufleet.batches.batch_request import BatchRequest, read_json
from gpufleet.batches.records import (
    CANCELLED,
    CANCELLING,
    IN_PROGRESS,
    VALIDATING,
    BatchRecord,
    FileRecord,
    new_id,
)
from gpufleet.batches.refusal import Refused, not_found
from gpufleet.batches.runner import BatchRunner
from gpufleet.batches.store import BatchStore
from gpufleet.batches.upload import FileUpload
from gpufleet.config.router import RouterConfig

#: Each path and the methods it takes (for 405 and ``Allow``).
_METHODS: Final = (
    (re.compile(r"/v1/files/?"), "GET, POST"),
    (re.compile(r"/v1/files/[^/]+/?"), "GET, DELETE"),
    (re.compile(r"/v1/files/[^/]+/content/?"), "GET"),
    (re.compile(r"/v1/batches/?"), "GET, POST"),
    (re.compile(r"/v1/batches/[^/]+/?"), "GET"),
    (re.compile(r"/v1/batches/[^/]+/cancel/?"), "POST"),
)


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
        self.uploads = FileUpload(store, cfg, clock=clock)
        self._clock = clock

    def register(self, app: web.Application) -> None:
        """Add the routes (before the proxy's catch-all)."""
        add = app.router.add_route
        add("POST", "/v1/files", self._guard(self.uploads.upload))
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
            except Refused as exc:
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
                answer = Refused(405, f"{path} takes {allow}, not {request.method}").response()
                answer.headers["Allow"] = allow
                break
        else:
            answer = Refused(404, f"no such route: {request.method} {path}").response()
        if request.body_exists and not request.content.is_eof():
            return await refuse_and_close(request, answer)
        return answer

    # Files --------------------------------------------------------------------------

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
            raise not_found("File", file_id)
        return record

    async def get_file(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{id}``."""
        return web.json_response((await self._file(request)).as_openai())

    async def delete_file(self, request: web.Request) -> web.Response:
        """``DELETE /v1/files/{id}`` (not while an unfinished batch reads it)."""
        record = await self._file(request)
        if await self.store.file_in_use(record.id):
            raise Refused(409, f"file {record.id} is the input of an unfinished batch")
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
            raise not_found("File", record.id) from None
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
        asked = BatchRequest.parse(await read_json(request))
        file = await self.store.get_file(asked.input_file_id)
        if file is None:
            raise not_found("File", asked.input_file_id, "input_file_id")
        asked.check_input(file, self.cfg.batch_max_lines)
        now = int(self._clock())
        record = BatchRecord(
            id=new_id("batch_"),
            endpoint=asked.endpoint,
            input_file_id=file.id,
            completion_window=asked.completion_window,
            status=VALIDATING,
            created_at=now,
            expires_at=now + asked.hours * 3600,
            total=file.lines,
            metadata=asked.metadata,
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
            raise not_found("Batch", batch_id)
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
            raise Refused(
                409, f"batch {record.id} is {record.status}: only a running batch can be cancelled"
            )
        cancelled = await self.runner.cancel(record.id)
        if cancelled is None:
            raise not_found("Batch", record.id)
        return web.json_response(cancelled.as_openai())


def _limit(request: web.Request, *, default: int, most: int) -> int:
    text = request.query.get("limit")
    if text is None:
        return default
    try:
        limit = int(text)
    except ValueError:
        raise Refused(400, "limit must be a whole number", param="limit") from None
    if not 1 <= limit <= most:
        raise Refused(400, f"limit must be in 1..{most}", param="limit")
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
