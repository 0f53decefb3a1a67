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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from gpufleet.client._payload import build_body, decode_reply
from gpufleet.client._transport import Reply
from gpufleet.client.batch_api import CALL_S, BatchApi
from gpufleet.client.items import Item, Result
from gpufleet.client.job_folder import JobFolder
from gpufleet.client.outputs import (
    inside,
    write_atomic,
)
from gpufleet.client.progress import NullProgress, Progress
from gpufleet.config.client import ClientConfig
from gpufleet.errors import ClientError, ConfigError, RequestFailed
from gpufleet.wire.batches import BatchObject, ResultLine
from gpufleet.wire.http import PeerClient

log = logging.getLogger("gpufleet.client")

#: Where the folder keeps the id of the batch it follows (a stem never starts with a dot).
STATE_FILE: Final = ".gpufleet-batch.json"
#: Batch statuses that do not change any more (OpenAI's).
_FINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
_RESULT_LINE: Final = msgspec.json.Decoder(ResultLine)


class BatchState(msgspec.Struct):
    """What ``STATE_FILE`` keeps: the batch this folder follows, and where."""

    batch_id: str
    endpoint: str | None = None
    path: str | None = None


_STATE: Final = msgspec.json.Decoder(BatchState)


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
    async with PeerClient(timeout_s=CALL_S) as http:
        api = BatchApi(http, base, cfg.timeout)
        async with job.running(progress):
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
            await job.finish(summary, progress)
    return summary


async def _keep_all(cfg: ClientConfig, api: BatchApi, job: JobFolder, batch: BatchObject) -> None:
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


def _read_state(out: Path) -> BatchState | None:
    """The batch an earlier run left in the folder (``STATE_FILE``), or None."""
    with contextlib.suppress(OSError, msgspec.DecodeError, RecursionError):
        return _STATE.decode(inside(out, STATE_FILE).read_bytes())
    return None


def _forget(out: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        inside(out, STATE_FILE).unlink()


async def _follow_or_submit(
    api: BatchApi,
    cfg: ClientConfig,
    out: Path,
    state: BatchState | None,
    todo: list[tuple[str, Item]],
) -> BatchObject:
    """The batch an earlier run left in the folder, if the router still runs it; else a new one."""
    if state is not None and state.endpoint == api.base and state.path == cfg.path:
        try:
            batch = await api.get_batch(state.batch_id)
        except RequestFailed as exc:
            if exc.status != 404:
                raise
            log.info("batch %s is gone from the router: submitting again", state.batch_id)
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
    batch = await api.submit(data, cfg.path, "gpufleet generate --server-side")
    kept = BatchState(batch.id, api.base, cfg.path)
    await asyncio.to_thread(write_atomic, out, STATE_FILE, msgspec.json.encode(kept))
    log.info("batch %s: %d request(s) submitted to %s", batch.id, len(todo), api.base)
    return batch


async def _follow(
    api: BatchApi, batch: BatchObject, progress: Progress, poll_s: float
) -> BatchObject:
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
        batch = await api.get_batch(batch.id)


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
