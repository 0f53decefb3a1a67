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
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp

from gpufleet.client._payload import build_body, decode_reply
from gpufleet.client._transport import Reply
from gpufleet.client.items import Item, Result, as_items
from gpufleet.client.outputs import (
    SUMMARY_FILE,
    ResultsLog,
    encode_output,
    inside,
    remove_stale_temporaries,
    unique_stems,
    write_atomic,
)
from gpufleet.client.progress import NullProgress, Progress
from gpufleet.config.client import ClientConfig
from gpufleet.errors import ClientError, ConfigError, RequestFailed

log = logging.getLogger("gpufleet.client")

#: Where the folder keeps the id of the batch it follows (a stem never starts with a dot).
STATE_FILE: Final = ".gpufleet-batch.json"
#: Batch statuses that do not change any more (OpenAI's).
_FINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
#: Budget of one API call (the upload has the job's request timeout instead).
_CALL_S: Final = 30.0


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
    out = Path(folder)
    progress = progress or NullProgress()
    all_items = as_items(items, seed=cfg.seed)
    stems = unique_stems([str(item.id) for item in all_items])
    results_log = ResultsLog(out)
    done, resolved, state = await asyncio.to_thread(_prepare, out, results_log, cfg.resume)
    todo = [(stem, item) for stem, item in zip(stems, all_items, strict=True) if stem not in done]
    skipped = len(all_items) - len(todo)
    by_stem = {stem: item for stem, item in todo}
    started_at, start = _now(), clock()
    progress.start(len(all_items), skipped, [])
    succeeded = failed = 0
    errors: dict[str, str] = {}
    batch: dict[str, Any] = {}
    async with aiohttp.ClientSession(trust_env=False) as session:
        api = _Api(session, base, cfg.timeout)
        try:
            await asyncio.to_thread(results_log.open)
            if todo:
                batch = await _follow_or_submit(api, cfg, out, state, todo)
                batch = await _follow(api, batch, progress, poll_s)
                written: set[str] = set()
                for key in ("output_file_id", "error_file_id"):
                    file_id = batch.get(key)
                    if not file_id:
                        continue
                    async for line in api.lines(file_id):
                        result = await _store(cfg, out, results_log, line, by_stem, written)
                        if result is None:
                            continue
                        if result.ok:
                            succeeded += 1
                        else:
                            failed += 1
                            if len(errors) < 20:
                                errors[result.id] = result.error or "failed"
                for stem, item in todo:
                    if stem in written:
                        continue  # an item without a line: the batch stopped before it
                    error = f"not run: the batch ended {batch.get('status')}"
                    record = _record(str(item.id), stem, None, "failed", base, error, item.seed)
                    await asyncio.to_thread(results_log.append, record)
                    failed += 1
                    if len(errors) < 20:
                        errors[str(item.id)] = error
                await asyncio.to_thread(_forget, out)
            wall = clock() - start
            summary = {
                "success": failed == 0,
                "total": len(all_items),
                "succeeded": succeeded,
                "failed": failed,
                "skipped": skipped,
                "wall_s": round(wall, 3),
                "throughput_items_per_s": round(succeeded / wall, 3) if wall > 0 else 0.0,
                "seed": cfg.seed,
                "dispatch": "server-side",
                "batch_id": batch.get("id"),
                "batch_status": batch.get("status"),
                "endpoints": {base: {"served": succeeded}},
                "errors": errors,
                "started_at": started_at,
                "finished_at": _now(),
                "output_dir": resolved,
            }
            text = json.dumps(summary, indent=2) + "\n"
            await asyncio.to_thread(write_atomic, out, SUMMARY_FILE, text.encode())
            progress.finish(summary)
        finally:
            results_log.close()
            progress.close()
    return summary


def _prepare(
    out: Path, results_log: ResultsLog, resume: bool
) -> tuple[dict[str, str], str, dict[str, Any] | None]:
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    state: dict[str, Any] | None = None
    if resume:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(inside(out, STATE_FILE).read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and isinstance(loaded.get("batch_id"), str):
                state = loaded
    return (results_log.done() if resume else {}), str(out.resolve()), state


def _forget(out: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        inside(out, STATE_FILE).unlink()


async def _follow_or_submit(
    api: _Api,
    cfg: ClientConfig,
    out: Path,
    state: dict[str, Any] | None,
    todo: list[tuple[str, Item]],
) -> dict[str, Any]:
    """The batch an earlier run left in the folder, if the router still runs it; else a new one."""
    if state is not None and state.get("endpoint") == api.base and state.get("path") == cfg.path:
        try:
            batch = await api.json("GET", f"/v1/batches/{state['batch_id']}")
        except RequestFailed as exc:
            if exc.status != 404:
                raise
            log.info("batch %s is gone from the router: submitting again", state["batch_id"])
        else:
            if batch.get("status") not in ("failed", "cancelled", "cancelling", "expired"):
                log.info("following batch %s left by an earlier run", batch["id"])
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
    uploaded = await api.json("POST", "/v1/files", data=form, budget=cfg.timeout)
    body = {
        "input_file_id": uploaded["id"],
        "endpoint": cfg.path,
        "completion_window": "24h",
        "metadata": {"created_by": "gpufleet generate --server-side"},
    }
    batch = await api.json("POST", "/v1/batches", json_body=body)
    kept = {"batch_id": batch["id"], "endpoint": api.base, "path": cfg.path}
    await asyncio.to_thread(write_atomic, out, STATE_FILE, json.dumps(kept).encode())
    log.info("batch %s: %d request(s) submitted to %s", batch["id"], len(todo), api.base)
    return batch


async def _follow(
    api: _Api, batch: dict[str, Any], progress: Progress, poll_s: float
) -> dict[str, Any]:
    """Poll the batch until it ends, moving the progress reporter by its counts."""
    shown_ok = shown_failed = 0
    while True:
        counts = batch.get("request_counts") or {}
        ok, bad = int(counts.get("completed", 0)), int(counts.get("failed", 0))
        for _ in range(ok - shown_ok):
            progress.advance(Result(id="", index=-1, status="ok"))
        for _ in range(bad - shown_failed):
            error = "failed at the fleet (its error is in results.jsonl when the batch ends)"
            progress.advance(Result(id="(batch)", index=-1, status="failed", error=error))
        shown_ok, shown_failed = max(ok, shown_ok), max(bad, shown_failed)
        if batch.get("status") in _FINAL:
            return batch
        await asyncio.sleep(poll_s)
        batch = await api.json("GET", f"/v1/batches/{batch['id']}")


async def _store(
    cfg: ClientConfig,
    out: Path,
    results_log: ResultsLog,
    raw: bytes,
    by_stem: dict[str, Item],
    written: set[str],
) -> Result | None:
    """One output or error line into the folder: its output file, then its record."""
    try:
        line = json.loads(raw)
        stem = line["custom_id"]
    except (ValueError, KeyError, TypeError):
        log.warning("a line of the batch's output is not a result: %.200r", raw)
        return None
    item = by_stem.get(stem) if isinstance(stem, str) else None
    if item is None or stem in written:
        return None  # not an item of this run (an earlier run's), or seen already
    written.add(stem)
    response = line.get("response") or {}
    status_code = response.get("status_code")
    body = response.get("body")
    item_id = str(item.id)
    result = Result(id=item_id, index=-1, status="failed", seed=item.seed, attempts=1)
    if isinstance(status_code, int) and 200 <= status_code < 300:
        payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
        reply = Reply(status_code, payload.encode() if isinstance(payload, str) else payload)
        try:
            output, content_type = decode_reply(cfg.path, reply)
            data, ext = encode_output(output, content_type)
            await asyncio.to_thread(write_atomic, out, stem + ext, data)
        except (OSError, ClientError) as exc:
            result.error = f"cannot write output: {exc}"
        else:
            result.status = "ok"
            record = _record(item_id, stem, stem + ext, "ok", cfg.endpoints[0], None, item.seed)
            await asyncio.to_thread(results_log.append, record)
            return result
    else:
        result.error = _error_text(line, status_code, body)
    record = _record(item_id, stem, None, "failed", cfg.endpoints[0], result.error, item.seed)
    await asyncio.to_thread(results_log.append, record)
    return result


def _error_text(line: dict[str, Any], status_code: Any, body: Any) -> str:
    error = line.get("error")
    if isinstance(error, dict) and error.get("message"):
        return f"{error.get('code') or 'error'}: {error['message']}"
    if isinstance(body, dict):
        name: Any = body.get("error")
        message: Any = body.get("message")
        if isinstance(name, dict):  # OpenAI's shape: {"error": {"message", "type", ...}}
            name, message = name.get("type"), name.get("message")
        words = ": ".join(str(part) for part in (name, message) if part)
        if words:
            return f"HTTP {status_code} {words}"
    return f"HTTP {status_code}"


def _record(
    item_id: str,
    stem: str,
    file: str | None,
    status: str,
    endpoint: str,
    error: str | None,
    seed: int | None,
) -> dict[str, Any]:
    """A ``results.jsonl`` line, as ``run_job`` writes it."""
    return {
        "id": item_id,
        "key": stem,
        "file": file,
        "status": status,
        "endpoint": endpoint,
        "upstream": None,
        "attempts": 1,
        "seconds": 0.0,
        "seed": seed,
        "error": error,
    }


class _Api:
    """The router's Files and Batches routes; failures as ``RequestFailed``."""

    def __init__(self, session: aiohttp.ClientSession, base: str, timeout: float) -> None:
        self.session = session
        self.base = base
        self.timeout = timeout

    async def json(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        json_body: Any = None,
        budget: float = _CALL_S,
    ) -> dict[str, Any]:
        url = self.base + path
        try:
            async with (
                asyncio.timeout(budget),
                self.session.request(method, url, data=data, json=json_body) as resp,
            ):
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RequestFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not 200 <= status < 300 or not isinstance(answer, dict):
            message = raw[:500].decode("utf-8", "replace")
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                message = str(answer["error"].get("message"))
            if status == 404 and path.startswith("/v1/files"):
                message += (
                    " (no Batch API there: point --endpoint at a router started by"
                    " `gpufleet up`, or by `gpufleet router --batch-store DIR`)"
                )
            raise RequestFailed(f"{method} {url}: HTTP {status}: {message}", status=status)
        return answer

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines, read as they arrive (a large output is never held whole)."""
        url = f"{self.base}/v1/files/{file_id}/content"
        try:
            async with self.session.get(
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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
