"""The worker's core, below HTTP: state, the bounded queue, the counters (the batch loop
that feeds the device is ``batch_loop``).

``WorkerService.submit`` is what every route calls: it queues one item per input, waits
for their answers (each caller gets exactly its own, in order) and takes them out of the
queue when the caller goes away or its deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from gpufleet import wire
from gpufleet.config.worker import WorkerConfig
from gpufleet.errors import DeadlineExceeded, WorkerOverloaded, WorkerUnavailable
from gpufleet.worker.batch_loop import BatchLoop
from gpufleet.worker.batcher import Batcher, QueuedItem
from gpufleet.worker.metrics import WorkerMetrics
from gpufleet.worker.runner import ModelInfo, Runner
from gpufleet.worker.stall import Stall, StallWatch
from gpufleet.worker.stats import WorkerCounters

log = logging.getLogger("gpufleet.worker")

#: The class of the request being handled (``X-Gpufleet-Priority``: 0 interactive, 1
#: batch), set per request by the HTTP layer; ``submit`` gives it to the items.
REQUEST_PRIORITY: ContextVar[int] = ContextVar("gpufleet_request_priority", default=0)


class WorkerService:
    """One model on one device: load it, batch requests into it, count what happens."""

    def __init__(self, cfg: WorkerConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.state = wire.WorkerState.LOADING
        self.runner = Runner(
            cfg.model,
            cfg.model_args,
            cfg.device,
            isolate_failures=cfg.isolate_failures,
            clock=clock,
        )
        self.counters = WorkerCounters()
        self.metrics = WorkerMetrics(cfg.model)
        self.batch_loop = BatchLoop(self.runner, self.counters, self.metrics, clock)
        self.runner.on_oom = self.batch_loop.on_oom_from_thread
        self.stall_watch = StallWatch(
            self.runner, cfg.stall_timeout_s, clock, self.counters, self.metrics
        )
        self.info: ModelInfo | None = None
        self.batcher: Batcher | None = None
        self.started_at = clock()
        self.load_error: BaseException | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    # lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the model off the loop; on success start the batch loop and turn ready."""
        try:
            info = await self.runner.load()
        except Exception as exc:
            self.state = wire.WorkerState.FAILED
            self.load_error = exc
            raise
        self.info = info
        batch_cfg = self.cfg.batch(info.max_batch_size)
        self.batcher = Batcher(batch_cfg, clock=self.clock, on_drop=self.batch_loop.on_drop)
        self.metrics.max_batch_size.set(batch_cfg.max_batch_size)
        self._task = asyncio.create_task(self.batch_loop.run(self.batcher), name="batch-loop")
        if self.state == wire.WorkerState.LOADING:
            self.state = wire.WorkerState.READY
            self.metrics.ready.set(1)
        log.info(
            "model %s (%s) ready on %s, max batch %d",
            info.name,
            info.kind,
            info.device,
            batch_cfg.max_batch_size,
        )

    async def drain(self, limit_s: float) -> bool:
        """Stop taking work and wait for in-flight requests; True when they all finished."""
        self.stop_taking_work()
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def stop_taking_work(self) -> None:
        """Turn draining (the first SIGTERM): new work is refused, ``/health`` answers 503."""
        self.state = wire.WorkerState.DRAINING
        self.metrics.ready.set(0)

    async def aclose(self) -> None:
        """Stop the batch loop and fail whatever is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.batcher is not None:
            for item in self.batcher.drain_all():
                if item.future is not None and not item.future.done():
                    item.future.set_exception(WorkerUnavailable("the worker is stopping"))

    # requests ----------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        """Loaded and not draining."""
        return self.state == wire.WorkerState.READY

    def check_ready(self) -> None:
        """Raises WorkerUnavailable unless the worker takes new work (not when stalled)."""
        if self.state != wire.WorkerState.READY:
            raise WorkerUnavailable(f"the worker is {self.state}")
        stall = self.check_stall()
        if stall is not None:
            # Queued behind a batch that may never end: better another worker (a router
            # retries WorkerUnavailable elsewhere: it never started).
            raise WorkerUnavailable(f"the worker is stalled: {stall.reason}")

    def check_stall(self) -> Stall | None:
        """The device thread's stall, if it has one now (see ``stall.StallWatch``)."""
        return self.stall_watch.check(self.batcher)

    @contextlib.contextmanager
    def request(self) -> Any:
        """Count one request in flight for its whole life (drain waits for these)."""
        self.counters.in_flight += 1
        self.metrics.in_flight.inc()
        self._idle.clear()
        try:
            yield
        finally:
            self.counters.in_flight -= 1
            self.metrics.in_flight.dec()
            if self.counters.in_flight == 0:
                self._idle.set()

    async def submit(self, payloads: Sequence[Any], deadline: float | None) -> list[Any]:
        """Queue ``payloads`` as items and return their outputs in order.

        Outputs come back already through the model's ``encode`` (run on the device thread).

        Raises:
            TooManyInputs: more payloads than ``max_queue``: they could never fit (413).
            WorkerOverloaded: the queue has no room for all of them (nothing was queued).
            WorkerUnavailable: loading, draining, or stopped while waiting.
            ModelError: predict raised for a batch holding one of them.
            DeadlineExceeded: ``deadline`` (monotonic clock) passed first.
        """
        self.check_ready()
        batcher = self.batcher
        if batcher is None:
            raise WorkerUnavailable("the worker is loading")
        loop = asyncio.get_running_loop()
        now = self.clock()
        priority = REQUEST_PRIORITY.get()
        items = [
            QueuedItem(p, now, deadline, future=loop.create_future(), priority=priority)
            for p in payloads
        ]
        try:
            batcher.put(items)
        except WorkerOverloaded as exc:
            exc.retry_after_s = self.retry_after_s()
            raise
        self.metrics.queue_depth.set(batcher.depth)
        futures = [i.future for i in items if i.future is not None]
        expired = False
        try:
            if deadline is None:
                return list(await asyncio.gather(*futures))
            async with asyncio.timeout(max(0.0, deadline - now)):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            expired = True
            raise DeadlineExceeded(f"deadline passed after {self.clock() - now:.3f}s") from None
        finally:
            # Caller gone, deadline passed, or a sibling failed: leave the queue now, not
            # when the batch on the device ends, so the slots are free for the next caller
            # at once (issue 12). A cancelled gather has already cancelled the futures:
            # those count as well.
            left: list[QueuedItem] = []
            for item in items:
                f = item.future
                if f is not None and (not f.done() or f.cancelled()):
                    item.cancelled = not expired  # dropped as "cancelled", else "expired"
                    f.cancel()
                    left.append(item)
            if batcher.discard(left):
                self.metrics.queue_depth.set(batcher.depth)
                batcher.notify()

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """Hold one queue slot for a stream's whole life (streams count against max_queue).

        Raises:
            WorkerOverloaded: the queue is full (before any response byte: a clean 503).
            WorkerUnavailable: loading or draining.
        """
        self.check_ready()
        batcher = self.batcher
        if batcher is None:
            raise WorkerUnavailable("the worker is loading")
        try:
            batcher.reserve()
        except WorkerOverloaded as exc:
            exc.retry_after_s = self.retry_after_s()
            raise
        self.counters.streams += 1
        try:
            yield
        finally:
            batcher.release()
            self.counters.streams -= 1

    async def stream(self, payload: Any) -> AsyncGenerator[Any, None]:
        """The encoded pieces of the model's streaming answer for one input.

        Consume it inside ``stream_slot()`` and ``contextlib.aclosing`` so that a caller who
        leaves closes the model's generator.
        """
        self.check_ready()
        async with contextlib.aclosing(self.runner.stream(payload)) as pieces:
            async for piece in pieces:
                yield piece

    def retry_after_s(self) -> float:
        """A guess at when the queue will have room: its depth at the recent batch rate."""
        if self.batcher is None or not self.counters.batches:
            return 1.0
        elapsed = max(self.clock() - self.started_at, 1e-3)
        items_per_s = self.counters.batched_items / elapsed
        return min(30.0, max(1.0, self.batcher.depth / max(items_per_s, 1e-3)))

    # the device ------------------------------------------------------------------------

    # /stats ------------------------------------------------------------------------------

    def stats(self, gpu: wire.GpuReading | None = None) -> wire.WorkerStats:
        """The /stats answer; ``gpu``: the device's last NVML reading, if any."""
        c = self.counters
        info = self.info
        stall = self.check_stall()
        return wire.WorkerStats(
            server=wire.WORKER_SERVER_NAME,
            model=info.name if info else self.cfg.model,
            kind=info.kind if info else "unknown",
            device=info.device if info else self.cfg.device,
            pid=os.getpid(),
            state=wire.WorkerState.STALLED if stall is not None else self.state,
            stall_reason=None if stall is None else stall.reason,
            stalls=c.stalls,
            stall_timeout_s=self.cfg.stall_timeout_s,
            queue_depth=self.batcher.depth if self.batcher else 0,
            in_flight=c.in_flight,
            served=c.served,
            errors=c.errors,
            rejected=c.rejected,
            dropped=c.dropped,
            failed_items=c.failed_items,
            batches=c.batches,
            avg_batch_size=round(c.avg_batch_size, 3),
            max_batch_size=self.batcher.max_batch_size if self.batcher else 0,
            configured_max_batch_size=self.batcher.cfg.max_batch_size if self.batcher else 0,
            oom_splits=c.oom_splits,
            isolation_splits=self.runner.isolation_splits,
            max_queue=self.cfg.max_queue,
            streams=c.streams,
            streams_closed=self.runner.streams_closed,
            latency_ms=c.latency_ms(),
            uptime_s=round(self.clock() - self.started_at, 3),
            recent_errors=c.recent_errors(),
            gpu=gpu,
        )
