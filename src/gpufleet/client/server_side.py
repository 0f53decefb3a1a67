"""``gpufleet generate --server-side``: the job as a batch the fleet keeps.

The prompts file becomes a Batch API input (one line per item, its ``custom_id`` the
item's output stem), uploaded with ``POST /v1/files`` and started with ``POST
/v1/batches`` at the one router endpoint; the batch's counts are followed with the same
progress reporter ``generate`` uses; when it ends, its output and error files are read
line by line into the folder layout ``run_job`` writes: one output file per item
(atomic, named by the same safe stems, never outside the folder), ``results.jsonl`` and
``summary.json``.

The job no longer dies with the terminal: the batch's id is kept in the folder
(``.gpufleet-batch.json``, a name no item's stem can take), so the same command run again
follows the same batch instead of sending it twice, and items already done there are not
sent at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import msgspec

from gpufleet.client._payload import build_body, decode_reply
from gpufleet.client._transport import Reply
from gpufleet.client.items import Item, Result
from gpufleet.client.job_folder import JobFolder
from gpufleet.client.outputs import (
    inside,
    write_atomic,
)
from gpufleet.client.progress import NullProgress, Progress
from gpufleet.config.client import ClientConfig
from gpufleet.errors import ClientError, ConfigError, RequestFailed
from gpufleet.wire.batches import BatchObject, FileObject, ResultLine
from gpufleet.wire.http import PeerClient

log = logging.getLogger("gpufleet.client")

#: Where the folder keeps the id of the batch it follows (a stem never starts with a dot).
STATE_FILE: Final = ".gpufleet-batch.json"
#: Batch statuses that do not change any more (OpenAI's).
_FINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
#: Budget of one API call (the upload has the job's request timeout instead).
_CALL_S: Final = 30.0
_RESULT_LINE: Final = msgspec.json.Decoder(ResultLine)
T = TypeVar("T")


async def run_server_side(
    cfg: ClientConfig,
    items: Sequence[Item | Any],
    folder: str | Path,
    *,
    progress: Progress | None = None,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Run ``items`` as a batch at the router ``cfg.endpoints[0]``; what ``summary.json`` holds.

    Raises:
        ConfigError: not exactly one endpoint.
        RequestFailed: the router refused the upload or the batch, or stopped answering.
    """
    if len(cfg.endpoints) != 1:
        raise ConfigError("--server-side sends the job to one router: give one --endpoint")
    base = cfg.endpoints[0].rstrip("/")
    progress = progress or NullProgress()
    job = JobFolder(folder, items, seed=cfg.seed)
    await job.prepare(cfg.resume)
    state = await asyncio.to_thread(_read_state, job.out) if cfg.resume else None
    start = clock()
    progress.start(len(job.items), job.skipped, [])
    batch: BatchObject | None = None
    async with PeerClient(timeout_s=_CALL_S) as http:
        api = _Api(http, base, cfg.timeout)
        try:
            await job.open()
            if job.todo:
                batch = await _follow_or_submit(api, cfg, job.out, state, job.todo)
                batch = await _follow(api, batch, progress, poll_s)
                await _keep_all(cfg, api, job, batch)
                await asyncio.to_thread(_forget, job.out)
            summary = job.summary(
                clock() - start,
                seed=cfg.seed,
                dispatch="server-side",
                endpoints={base: {"served": job.succeeded}},
                batch_id=batch.id if batch is not None else None,
                batch_status=batch.status if batch is not None else None,
            )
            await job.write_summary(summary)
            progress.finish(summary)
        finally:
            job.close()
            progress.close()
    return summary


async def _keep_all(cfg: ClientConfig, api: _Api, job: JobFolder, batch: BatchObject) -> None:
    """Every line of the ended batch's output and error files into the folder; an item
    with no line there is failed as not run."""
    by_stem = dict(job.todo)
    written: set[str] = set()
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        async for line in api.lines(file_id):
            await _store(cfg, job, line, by_stem, written)
    for stem, item in job.todo:
        if stem in written:
            continue  # an item without a line: the batch stopped before it
        error = f"not run: the batch ended {batch.status}"
        await job.keep(_result(item, api.base, error), stem)


def _read_state(out: Path) -> dict[str, Any] | None:
    """The batch an earlier run left in the folder (``STATE_FILE``), or None."""
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(inside(out, STATE_FILE).read_text(encoding="utf-8"))
        if isinstance(loaded, dict) and isinstance(loaded.get("batch_id"), str):
            return loaded
    return None


def _forget(out: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        inside(out, STATE_FILE).unlink()


async def _follow_or_submit(
    api: _Api,
    cfg: ClientConfig,
    out: Path,
    state: dict[str, Any] | None,
    todo: list[tuple[str, Item]],
) -> BatchObject:
    """The batch an earlier run left in the folder, if the router still runs it; else a new one."""
    if state is not None and state.get("endpoint") == api.base and state.get("path") == cfg.path:
        try:
            batch = await api.call("GET", f"/v1/batches/{state['batch_id']}", BatchObject)
        except RequestFailed as exc:
            if exc.status != 404:
                raise
            log.info("batch %s is gone from the router: submitting again", state["batch_id"])
        else:
            if batch.status not in ("failed", "cancelled", "cancelling", "expired"):
                log.info("following batch %s left by an earlier run", batch.id)
                return batch
    lines = [
        json.dumps(
            {
                "custom_id": stem,
                "method": "POST",
                "url": cfg.path,
                "body": build_body(cfg.path, item),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for stem, item in todo
    ]
    data = ("\n".join(lines) + "\n").encode()
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", data, filename="prompts.jsonl", content_type="application/jsonl")
    uploaded = await api.call("POST", "/v1/files", FileObject, data=form, budget=cfg.timeout)
    body = {
        "input_file_id": uploaded.id,
        "endpoint": cfg.path,
        "completion_window": "24h",
        "metadata": {"created_by": "gpufleet generate --server-side"},
    }
    batch = await api.call("POST", "/v1/batches", BatchObject, json_body=body)
    kept = {"batch_id": batch.id, "endpoint": api.base, "path": cfg.path}
    await asyncio.to_thread(write_atomic, out, STATE_FILE, json.dumps(kept).encode())
    log.info("batch %s: %d request(s) submitted to %s", batch.id, len(todo), api.base)
    return batch


async def _follow(api: _Api, batch: BatchObject, progress: Progress, poll_s: float) -> BatchObject:
    """Poll the batch until it ends, moving the progress reporter by its counts."""
    shown_ok = shown_failed = 0
    while True:
        counts = batch.request_counts
        ok, bad = (counts.completed, counts.failed) if counts is not None else (0, 0)
        for _ in range(ok - shown_ok):
            progress.advance(Result(id="", index=-1, status="ok"))
        for _ in range(bad - shown_failed):
            error = "failed at the fleet (its error is in results.jsonl when the batch ends)"
            progress.advance(Result(id="(batch)", index=-1, status="failed", error=error))
        shown_ok, shown_failed = max(ok, shown_ok), max(bad, shown_failed)
        if batch.status in _FINAL:
            return batch
        await asyncio.sleep(poll_s)
        batch = await api.call("GET", f"/v1/batches/{batch.id}", BatchObject)


async def _store(
    cfg: ClientConfig, job: JobFolder, raw: bytes, by_stem: dict[str, Item], written: set[str]
) -> None:
    """One output or error line into the folder: its output file, then its record."""
    try:
        line = _RESULT_LINE.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        log.warning("a line of the batch's output is not a result: %.200r", raw)
        return
    stem = line.custom_id
    item = by_stem.get(stem)
    if item is None or stem in written:
        return  # not an item of this run (an earlier run's), or seen already
    written.add(stem)
    status_code = line.response.status_code if line.response is not None else None
    body = line.response.body if line.response is not None else None
    result = _result(item, cfg.endpoints[0])
    if status_code is not None and 200 <= status_code < 300:
        payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
        reply = Reply(status_code, payload.encode() if isinstance(payload, str) else payload)
        try:
            result.output, result.content_type = decode_reply(cfg.path, reply)
        except ClientError as exc:
            result.error = f"cannot write output: {exc}"
        else:
            result.status = "ok"
    else:
        result.error = _error_text(line, status_code, body)
    await job.keep(result, stem)


def _result(item: Item, endpoint: str, error: str | None = None) -> Result:
    """A failed result of ``item`` at ``endpoint``, its one attempt the batch's."""
    return Result(
        id=str(item.id),
        index=-1,
        status="failed",
        endpoint=endpoint,
        seed=item.seed,
        attempts=1,
        error=error,
    )


def _error_text(line: ResultLine, status_code: int | None, body: Any) -> str:
    error = line.error
    if error is not None and error.message:
        return f"{error.code or 'error'}: {error.message}"
    if isinstance(body, dict):
        name: Any = body.get("error")
        message: Any = body.get("message")
        if isinstance(name, dict):  # OpenAI's shape: {"error": {"message", "type", ...}}
            name, message = name.get("type"), name.get("message")
        words = ": ".join(str(part) for part in (name, message) if part)
        if words:
            return f"HTTP {status_code} {words}"
    return f"HTTP {status_code}"


class _Api:
    """The router's Files and Batches routes, through one PeerClient; ``RequestFailed``."""

    def __init__(self, http: PeerClient, base: str, timeout: float) -> None:
        self.http = http
        self.base = base
        self.timeout = timeout

    async def call(
        self,
        method: str,
        path: str,
        into: type[T],
        *,
        data: aiohttp.FormData | None = None,
        json_body: Any = None,
        budget: float = _CALL_S,
    ) -> T:
        """One call that must answer 2xx, its JSON decoded into ``into``."""
        try:
            return await self.http.call(
                method, self.base + path, into=into, data=data, json=json_body, timeout_s=budget
            )
        except RequestFailed as exc:
            if exc.status == 404 and path.startswith("/v1/files"):
                raise RequestFailed(
                    exc.message + " (no Batch API there: point --endpoint at a router started"
                    " by `gpufleet up`, or by `gpufleet router --batch-store DIR`)",
                    status=exc.status,
                ) from exc
            raise

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines, read as they arrive (a large output is never held whole)."""
        url = f"{self.base}/v1/files/{file_id}/content"
        try:
            # A streamed read on the client's session: the file may be larger than any
            # answer read whole, and its budget is per read, not for the whole file.
            async with self.http.session.get(
                url, timeout=aiohttp.ClientTimeout(total=None, sock_read=self.timeout)
            ) as resp:
                if resp.status != 200:
                    raise RequestFailed(f"GET {url}: HTTP {resp.status}", status=resp.status)
                rest = b""
                async for chunk in resp.content.iter_chunked(1 << 16):
                    *whole, rest = (rest + chunk).split(b"\n")
                    for line in whole:
                        if line.strip():
                            yield line
                if rest.strip():
                    yield rest
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RequestFailed(f"GET {url}: {type(exc).__name__}: {exc}") from exc
