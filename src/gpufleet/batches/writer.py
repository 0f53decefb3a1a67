"""``ResultWriter``: every finished request's result into the store, soon and in groups.

A result is handed over the moment its answer is read; the writer waits up to
``GROUP_S`` for more to join it (a group commit, as PostgreSQL's ``commit_delay``), then
commits what has arrived in one transaction, and whatever arrives meanwhile in the next.
Without the wait a commit took about a millisecond, so at a few hundred results a second
each one covered one or two results, and the commits (a transaction and a hop to the
store's thread each) took about a fifth of the router's CPU while a batch ran (measured
with py-spy on ``benchmarks/batch_priority.py``), CPU the router's proxying needs. The
wait costs no safety: what a ``kill -9`` can lose is only what was handed over since the
last commit began, and those requests are sent again after the restart, like the ones
that were in flight. ``flush`` does not wait for the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gpufleet.batches.records import ResultRow
from gpufleet.batches.store import BatchStore

log = logging.getLogger("gpufleet.batches")

#: Wait after a failed commit (a full disk) before trying the same rows again.
RETRY_S = 1.0
#: How long the first result of a commit waits for others to join it.
GROUP_S = 0.05


class ResultWriter:
    """Commits results as they come; ``flush`` waits until what was added is stored."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self._pending: dict[str, list[ResultRow]] = {}
        self._added = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._now = asyncio.Event()
        self._done = asyncio.Condition()

    def add(self, batch_id: str, row: ResultRow) -> None:
        """Queue one result for the next commit."""
        self._pending.setdefault(batch_id, []).append(row)
        self._added += 1
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every result added so far is committed."""
        target = self._added
        self._now.set()
        async with self._done:
            await self._done.wait_for(lambda: self._written >= target)

    async def run(self) -> None:
        """Commit forever (the owner cancels it after a last ``flush``)."""
        while True:
            await self._wake.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GROUP_S):
                    await self._now.wait()
            self._wake.clear()
            self._now.clear()
            while self._pending:
                pending, self._pending = self._pending, {}
                count = sum(len(rows) for rows in pending.values())
                for batch_id, rows in pending.items():
                    while True:
                        try:
                            await self._store.add_results(batch_id, rows)
                            break
                        except Exception:
                            log.exception(
                                "recording %d result(s) of %s failed", len(rows), batch_id
                            )
                            await asyncio.sleep(RETRY_S)
                self._written += count
                async with self._done:
                    self._done.notify_all()
