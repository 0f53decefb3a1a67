"""The loop that feeds the device: batches off the queue, run one at a time on the
device thread (``Runner.predict``), each caller's future given its output or its error.

A batch whose ``predict`` raised fails every item in it (``ModelError``, with whether
the input looks to blame); an item the model failed alone (``ItemFailed``) fails only its
caller; the loop outlives any one batch. Queue time, compute time and batch sizes are
counted here, and an out-of-memory split lowers the queue's batch size for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet.errors import DeadlineExceeded, ModelError
from gpufleet.worker.batcher import Batcher, QueuedItem
from gpufleet.worker.metrics import WorkerMetrics
from gpufleet.worker.runner import ItemFailed, Runner
from gpufleet.worker.stats import WorkerCounters

log = logging.getLogger("gpufleet.worker")


@dataclass(eq=False, slots=True)
class BatchLoop:
    """Runs the queue's batches on the device and resolves their callers' futures."""

    runner: Runner
    counters: WorkerCounters
    metrics: WorkerMetrics
    clock: Callable[[], float]
    #: The loop and queue ``run`` serves (set when it starts).
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _batcher: Batcher | None = field(default=None, init=False)

    async def run(self, batcher: Batcher) -> None:
        """Run batches as the queue forms them, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._batcher = batcher
        while True:
            batch = await batcher.next_batch()
            self.metrics.queue_depth.set(batcher.depth)
            try:
                await self._run_batch(batch)
            except Exception as exc:
                # The loop must outlive any one batch: fail its callers, keep serving.
                log.exception("batch of %d failed outside predict", len(batch))
                for item in batch:
                    if item.future is not None and not item.future.done():
                        item.future.set_exception(ModelError(f"{type(exc).__name__}: {exc}"))

    async def _run_batch(self, batch: list[QueuedItem]) -> None:
        started = self.clock()
        for item in batch:
            self.metrics.queue_time.observe(started - item.enqueued_at)
        self.counters.record_batch(len(batch))
        self.metrics.batch_size.observe(len(batch))
        try:
            outputs = await self.runner.predict([i.payload for i in batch])
        except ModelError as exc:
            log.error("predict failed for a batch of %d: %s", len(batch), exc.message)
            self.counters.failed_items += len(batch)
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(
                        ModelError(exc.message, request_fault=exc.request_fault)
                    )
            return
        finally:
            self.metrics.compute_time.observe(self.clock() - started)
        for item, out in zip(batch, outputs, strict=True):
            if isinstance(out, ItemFailed):
                self.counters.failed_items += 1
                if item.future is not None and not item.future.done():
                    item.future.set_exception(
                        ModelError(out.message, request_fault=out.request_fault)
                    )
            elif item.future is not None and not item.future.done():
                item.future.set_result(out)

    def on_drop(self, item: QueuedItem, now: float) -> None:
        """The queue dropped ``item`` (its caller left, or its deadline passed): fail it."""
        reason = "cancelled" if item.cancelled else "expired"
        self.counters.dropped += 1
        self.metrics.dropped.labels(reason=reason).inc()
        if item.future is not None and not item.future.done():
            item.future.set_exception(DeadlineExceeded("deadline passed while queued"))

    def on_oom_from_thread(self, new_max: int) -> None:
        """The device ran out of memory and split a batch (called on the device thread)."""
        # Hop to the loop before touching shared state.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._lower_max_batch, new_max)

    def _lower_max_batch(self, new_max: int) -> None:
        self.counters.oom_splits += 1
        self.metrics.oom.inc()
        batcher = self._batcher
        if batcher is not None and new_max < batcher.max_batch_size:
            batcher.max_batch_size = max(1, new_max)
            self.metrics.max_batch_size.set(batcher.max_batch_size)
            log.warning("effective max batch size lowered to %d", batcher.max_batch_size)


__all__ = ["BatchLoop"]
