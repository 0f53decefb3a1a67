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

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpufleet.client.client import Client
from gpufleet.client.items import Item
from gpufleet.client.job_folder import JobFolder
from gpufleet.client.progress import NullProgress, Progress

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
    progress = progress or NullProgress()
    job = JobFolder(folder, items, seed=client.config.seed)
    await job.prepare(resume)
    if job.skipped:
        log.info(
            "resuming: %d of %d item(s) already done in %s", job.skipped, len(job.items), job.out
        )
    start = clock()
    progress.start(len(job.items), job.skipped, client.endpoints)
    async with job.running(progress):
        stream = client.stream([item for _, item in job.todo])
        async with contextlib.aclosing(stream) as results:
            async for result in results:
                await job.keep(result, job.todo[result.index][0])
                progress.advance(result)
        wall = clock() - start
        summary = job.summary(
            wall,
            seed=client.config.seed,
            dispatch=client.config.dispatch,
            endpoints=_endpoints(client, job.succeeded, wall),
        )
        await job.finish(summary, progress)
    return summary


def _endpoints(client: Client, succeeded: int, wall: float) -> dict[str, dict[str, Any]]:
    """What each endpoint served, for the summary."""
    return {
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
