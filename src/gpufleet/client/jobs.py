"""A bulk job on disk: outputs in a folder, ``results.jsonl``, ``summary.json``, resume.

``run_job`` is what ``gpufleet generate`` runs. Each finished item first gets its output
file (written atomically), then its line in ``results.jsonl`` (flushed to disk); an item
is done for a re-run only when both exist, so a job killed at any moment and run again
ends with exactly one output per item and never rewrites a completed one.

A symbolic link planted in the folder is never followed (see ``outputs``): an output
named by one is written anew (the link replaced); an item whose output cannot be written
is recorded as failed with the reason, and the job goes on to its summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpufleet.client.client import Client
from gpufleet.client.items import Item, Result, as_items
from gpufleet.client.outputs import (
    SUMMARY_FILE,
    ResultsLog,
    encode_output,
    remove_stale_temporaries,
    unique_stems,
    write_atomic,
)
from gpufleet.client.progress import NullProgress, Progress
from gpufleet.errors import ClientError

log = logging.getLogger("gpufleet.client")


async def run_job(
    client: Client,
    items: Sequence[Item | Any],
    folder: str | Path,
    *,
    resume: bool = True,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Run ``items`` through ``client`` into ``folder``; return what ``summary.json`` holds."""
    out = Path(folder)
    progress = progress or NullProgress()
    all_items = as_items(items, seed=client.config.seed)
    stems = unique_stems([str(item.id) for item in all_items])
    results_log = ResultsLog(out)
    done, resolved = await asyncio.to_thread(_prepare, out, results_log, resume)
    todo = [(stem, item) for stem, item in zip(stems, all_items, strict=True) if stem not in done]
    skipped = len(all_items) - len(todo)
    if skipped:
        log.info("resuming: %d of %d item(s) already done in %s", skipped, len(all_items), out)
    started_at, start = _now(), clock()
    progress.start(len(all_items), skipped, client.endpoints)
    try:
        await asyncio.to_thread(results_log.open)
        counts, errors = await _drain(client, todo, out, results_log, progress)
        wall = clock() - start
        summary = _summary(client, all_items, skipped, *counts, wall, errors)
        summary.update(started_at=started_at, finished_at=_now(), output_dir=resolved)
        text = json.dumps(summary, indent=2) + "\n"
        await asyncio.to_thread(write_atomic, out, SUMMARY_FILE, text.encode())
        progress.finish(summary)
    finally:
        results_log.close()
        progress.close()
    return summary


async def _drain(
    client: Client,
    todo: list[tuple[str, Item]],
    out: Path,
    results_log: ResultsLog,
    progress: Progress,
) -> tuple[tuple[int, int], dict[str, str]]:
    """Store each result as it comes: the output file first, then its record."""
    succeeded = failed = 0
    errors: dict[str, str] = {}
    stream = client.stream([item for _, item in todo])
    async with contextlib.aclosing(stream) as results:
        async for result in results:
            stem = todo[result.index][0]
            file = None
            if result.ok:
                data, ext = encode_output(result.output, result.content_type)
                file = stem + ext
                try:
                    await asyncio.to_thread(write_atomic, out, file, data)
                except (OSError, ClientError) as exc:
                    result.status, result.error = "failed", f"cannot write output: {exc}"
                    file = None
            await asyncio.to_thread(results_log.append, _record(result, stem, file))
            if result.ok:
                succeeded += 1
            else:
                failed += 1
                if len(errors) < 20:
                    errors[result.id] = result.error or "failed"
            progress.advance(result)
    return (succeeded, failed), errors


def _prepare(out: Path, results_log: ResultsLog, resume: bool) -> tuple[dict[str, str], str]:
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temporaries(out)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    return (results_log.done() if resume else {}), str(out.resolve())


def _record(result: Result, stem: str, file: str | None) -> dict[str, Any]:
    return {
        "id": result.id,
        "key": stem,
        "file": file,
        "status": result.status,
        "endpoint": result.endpoint,
        "upstream": result.upstream,
        "attempts": result.attempts,
        "seconds": round(result.seconds, 4),
        "seed": result.seed,
        "error": result.error,
    }


def _summary(
    client: Client,
    items: list[Item],
    skipped: int,
    succeeded: int,
    failed: int,
    wall: float,
    errors: dict[str, str],
) -> dict[str, Any]:
    endpoints = {
        ep.url: {
            "served": ep.served,
            "failed_attempts": ep.failed_attempts,
            "share": round(ep.served / succeeded, 4) if succeeded else 0.0,
            "items_per_s": round(ep.served / wall, 3) if wall > 0 else 0.0,
            "mean_latency_s": round(ep.busy_s / ep.served, 4) if ep.served else None,
            "state": ep.state,
        }
        for ep in client.endpoints
    }
    return {
        "success": failed == 0,
        "total": len(items),
        "succeeded": succeeded,
        "failed": failed,
        "skipped": skipped,
        "wall_s": round(wall, 3),
        "throughput_items_per_s": round(succeeded / wall, 3) if wall > 0 else 0.0,
        "seed": client.config.seed,
        "dispatch": client.config.dispatch,
        "endpoints": endpoints,
        "errors": errors,
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
