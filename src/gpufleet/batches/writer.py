"""``ResultWriter``: every finished request's result into the store, soon and in groups.

A result is handed over the moment its answer is read; the writer commits what has
arrived in one transaction, and whatever arrives meanwhile in the next, so one
commit covers many results at high rates and a lone result waits for nobody. What a
``kill -9`` can lose is only what was handed over since the last commit began: those
requests are sent again after the restart, like the ones that were in flight.
"""

from __future__ import annotations

import asyncio
import logging

from gpufleet.batches.records import ResultRow
from gpufleet.batches.store import BatchStore

log = logging.getLogger("gpufleet.batches")

#: Wait after a failed commit (a full disk) before trying the same rows again.
RETRY_S = 1.0


class ResultWriter:
    """Commits results as they come; ``flush`` waits until what was added is stored."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self._pending: dict[str, list[ResultRow]] = {}
        self._added = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._done = asyncio.Condition()

    def add(self, batch_id: str, row: ResultRow) -> None:
        """Queue one result for the next commit."""
        self._pending.setdefault(batch_id, []).append(row)
        self._added += 1
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every result added so far is committed."""
        target = self._added
        async with self._done:
            await self._done.wait_for(lambda: self._written >= target)

    async def run(self) -> None:
        """Commit forever (the owner cancels it after a last ``flush``)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
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
