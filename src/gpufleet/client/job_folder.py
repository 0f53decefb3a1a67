"""A job's folder, the same whoever runs the items: outputs, ``results.jsonl``, ``summary.json``.

``run_job`` (the client sends each item) and ``run_server_side`` (the fleet runs them as
one batch) both write through a ``JobFolder``: it finds what an earlier run finished (a
resume), keeps each result (its output file first, written atomically, then its line in
``results.jsonl``, flushed), counts them, and writes the summary last.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from gpufleet.client.items import Item, Result, as_items
from gpufleet.client.outputs import (
    SUMMARY_FILE,
    ResultRecord,
    ResultsLog,
    encode_output,
    remove_stale_temporaries,
    unique_stems,
    write_atomic,
)
from gpufleet.client.progress import Progress
from gpufleet.errors import ClientError

log = logging.getLogger("gpufleet.client")

#: Failed items whose error the summary quotes.
MAX_ERRORS: Final = 20


class JobFolder:
    """The folder of one run of ``items``: what is left to do, and what became of it."""

    def __init__(self, folder: str | Path, items: Sequence[Item | Any], *, seed: int | None):
        self.out = Path(folder)
        self.items = as_items(items, seed=seed)
        #: Each item's output stem, in the order of ``items``.
        self.stems = unique_stems([str(item.id) for item in self.items])
        self.results_log = ResultsLog(self.out)
        #: ``(stem, item)`` not done by an earlier run (set by ``prepare``).
        self.todo: list[tuple[str, Item]] = []
        #: The folder's absolute path, as the summary names it.
        self.resolved = str(self.out)
        self.started_at = _now()
        self.succeeded = 0
        self.failed = 0
        #: ``{item id: error}`` of the first ``MAX_ERRORS`` failed items.
        self.errors: dict[str, str] = {}

    @property
    def skipped(self) -> int:
        """Items an earlier run finished."""
        return len(self.items) - len(self.todo)

    async def prepare(self, resume: bool) -> None:
        """Make the folder, delete an interrupted run's temporaries, find what is left."""
        done = await asyncio.to_thread(self._prepare, resume)
        self.todo = [
            (stem, item)
            for stem, item in zip(self.stems, self.items, strict=True)
            if stem not in done
        ]
        self.started_at = _now()

    def _prepare(self, resume: bool) -> dict[str, str]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.resolved = str(self.out.resolve())
        removed = remove_stale_temporaries(self.out)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run", removed)
        return self.results_log.done() if resume else {}

    @contextlib.asynccontextmanager
    async def running(self, progress: Progress) -> AsyncIterator[None]:
        """``results.jsonl`` open for appending while the items run; it and ``progress``
        are closed however the run ends."""
        try:
            await asyncio.to_thread(self.results_log.open)
            yield
        finally:
            self.results_log.close()
            progress.close()

    async def keep(self, result: Result, stem: str) -> None:
        """One finished item: its output file (an ``ok`` one), then its record; counted.

        An output that cannot be written fails the item, with the reason.
        """
        file = None
        if result.ok:
            try:
                data, ext = encode_output(result.output, result.content_type)
                await asyncio.to_thread(write_atomic, self.out, stem + ext, data)
            except (OSError, ClientError) as exc:
                result.status, result.error = "failed", f"cannot write output: {exc}"
            else:
                file = stem + ext
        await asyncio.to_thread(self.results_log.append, _record(result, stem, file))
        if result.ok:
            self.succeeded += 1
        else:
            self.failed += 1
            if len(self.errors) < MAX_ERRORS:
                self.errors[result.id] = result.error or "failed"

    def summary(
        self,
        wall: float,
        *,
        seed: int | None,
        dispatch: str,
        endpoints: Mapping[str, object],
        **more: object,
    ) -> dict[str, Any]:
        """What ``summary.json`` holds (``more`` after ``dispatch``)."""
        return {
            "success": self.failed == 0,
            "total": len(self.items),
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "wall_s": round(wall, 3),
            "throughput_items_per_s": round(self.succeeded / wall, 3) if wall > 0 else 0.0,
            "seed": seed,
            "dispatch": dispatch,
            **more,
            "endpoints": endpoints,
            "errors": self.errors,
            "started_at": self.started_at,
            "finished_at": _now(),
            "output_dir": self.resolved,
        }

    async def finish(self, summary: dict[str, Any], progress: Progress) -> None:
        """Write ``summary.json`` (atomically), then show it."""
        text = json.dumps(summary, indent=2) + "\n"
        await asyncio.to_thread(write_atomic, self.out, SUMMARY_FILE, text.encode())
        progress.finish(summary)


def _record(result: Result, stem: str, file: str | None) -> ResultRecord:
    """A ``results.jsonl`` line."""
    return ResultRecord(
        id=result.id,
        key=stem,
        file=file,
        status=result.status,
        endpoint=result.endpoint,
        upstream=result.upstream,
        attempts=result.attempts,
        seconds=round(result.seconds, 4),
        seed=result.seed,
        error=result.error,
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


__all__ = ["MAX_ERRORS", "JobFolder"]
