"""``BatchRunner``: sends every batch's requests through the router, below interactive traffic.

Each request is handed to the router's proxy in this process (``Proxy.call``) with
``X-Gpufleet-Priority: batch``, so it takes the path any caller's request takes
(admission, policy, retries, body limit, prefix index, token counts, stats) in the
``batch`` class, without crossing the router's own socket twice (a loopback POST cost
the router about 1 ms of CPU per request): it is dispatched only when no interactive
request waits, and holds at most ``batch_share`` of an upstream's cap.

Dispatch is the client's: each batch is one job of ``client.dispatch.Dispatcher``
(pull-based, retries with back-off, pause on "busy", cool-down and probe), not a copy of
it. Its one endpoint is the pool, reached through ``Proxy.call``; the batches of a pool
share that ``Endpoint`` and its condition, as concurrent jobs of one ``Client`` share
theirs. Why one endpoint for the pool and not one per upstream: placing a request on an
upstream is the router's admission and policy's job (the batch share, prefix affinity,
retries on another upstream, a slow upstream taking fewer because its slots free up
later: pull-based per upstream slot); pinning batch requests to upstreams from here would
be a second placement that bypasses them. What the dispatcher adds on top is what a
client of a router needs: how many to keep in flight, what to do with each answer. The
endpoint's ``slots`` follow the pool's batch capacity (the ready upstreams' batch caps
plus a quarter, up to ``batch_max_in_flight``), set again whenever a request is about to
go or has come back, so it grows as workers join or learn larger caps; it learns no cap
of its own from "busy" answers (``learns_cap``), since the capacity is known here.

Each result is handed to the ``ResultWriter`` as soon as it is read (one stored row per
``custom_id``; a second one for the same id is ignored), and the output files are
assembled from those rows when the batch finishes. After a ``kill -9`` the router
resumes every unfinished batch at start: requests with a stored result are not sent
again; the ones in flight at the crash are.

Routers sharing one store (PostgreSQL, or one SQLite folder) run each batch once: a
router runs a batch only while it holds the batch's claim (``BatchStore.claim``: an
``flock`` or a PostgreSQL advisory lock, which end with the process or its connection,
``batches/claims.py``). Every ``LOOK_EVERY_S`` each router tries to claim the unfinished
batches it does not run — those of a router that died are free at once, so another takes
them over within that time — and stops a batch of its own that was cancelled through
another router.

Outcomes of one request:

- a 2xx answer: the output file; any other answer the upstream gave for good (a 4xx; a
  5xx the worker blamed on the request): the error file, with its ``response``;
- "not now" (503 with ``Retry-After``: the router's queue was full or nothing is ready;
  429): ``ServerBusy`` to the dispatcher, which pauses the pool's endpoint for that wait
  and sends it again without counting an attempt (``busy_is_attempt=False``), until the
  batch expires;
- a failure that may pass (another 5xx, 408, no connection): sent again with a back-off,
  at most ``MAX_ATTEMPTS`` times, then recorded as failed with its last answer or error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gpufleet import wire
from gpufleet.batches import output
from gpufleet.batches.jsonl import LineChecker, Request
from gpufleet.batches.records import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    FINALIZING,
    FINISHED,
    IN_PROGRESS,
    PURPOSE_OUTPUT,
    UNFINISHED,
    VALIDATING,
    BatchRecord,
    FileRecord,
    ResultRow,
    new_id,
)
from gpufleet.batches.store import BatchStore
from gpufleet.batches.writer import ResultWriter
from gpufleet.client.dispatch import Dispatcher, ProbeOutcome, ServerBusy
from gpufleet.client.endpoints import Endpoint
from gpufleet.client.items import Answer, Item, Result
from gpufleet.config.client import ClientConfig
from gpufleet.config.router import RouterConfig
from gpufleet.errors import RequestFailed
from gpufleet.router.admission import BATCH, Admission
from gpufleet.router.app import openai_shaped
from gpufleet.router.pool import Registry
from gpufleet.router.proxy import Proxy

log = logging.getLogger("gpufleet.batches")

#: Attempts of one request that failed in a way that may pass, before it is failed.
MAX_ATTEMPTS: Final = 5
BACKOFF_BASE_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
#: A "not now" answer is retried after its Retry-After, within these bounds.
BUSY_MIN_S: Final = 0.05
BUSY_MAX_S: Final = 10.0
#: How often a router looks for batches left by another (sharing its store) and for
#: cancellations of its own batches asked of another router.
LOOK_EVERY_S: Final = 5.0
#: Error names of a 503 that mean "not started, come back" (the request never ran).
_NOT_NOW: Final = frozenset(
    {
        wire.ErrorCode.ADMISSION_REJECTED,
        wire.ErrorCode.NO_HEALTHY_BACKEND,
        wire.ErrorCode.WORKER_OVERLOADED,
        wire.ErrorCode.WORKER_UNAVAILABLE,
    }
)
_EXPIRED_ERROR: Final = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


@dataclass(eq=False)
class _Run:
    """One batch being sent: its progress and how to stop it."""

    record: BatchRecord
    pool: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    total: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.monotonic)
    #: Results this run recorded (not those stored before a restart).
    done_here: int = 0

    def progress(self) -> dict[str, Any]:
        """The batch's line in ``/stats``."""
        elapsed = time.monotonic() - self.started
        return {
            "id": self.record.id,
            "status": self.record.status,
            "endpoint": self.record.endpoint,
            "pool": self.pool,
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "requests_per_s": round(self.done_here / elapsed, 3) if elapsed > 0 else 0.0,
        }


class _Retry(RequestFailed):
    """An attempt failed in a way that may pass; ``line`` keeps its answer, if any."""

    def __init__(self, reason: str, line: bytes | None = None) -> None:
        super().__init__(reason, retryable=True)
        self.line = line


@dataclass(frozen=True, slots=True)
class _Sent:
    """What the dispatcher carries for one request: it, and its row id (one per request)."""

    request: Request
    row_id: str


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A request's final answer: for the output file (``ok``) or the error file."""

    ok: bool
    line: bytes


class _Lane:
    """One pool's dispatch, shared by its running batches: the endpoint and its condition."""

    def __init__(self, pool: str) -> None:
        self.endpoint = Endpoint(f"pool {pool}", 0, 1, learns_cap=False)
        self.cond = asyncio.Condition()
        #: The batches (dispatcher jobs) running over this pool now.
        self.jobs: set[Dispatcher] = set()

    @property
    def queued(self) -> int:
        """Requests of the running batches not sent yet (or back for a retry)."""
        return sum(job.pending for job in self.jobs)


class BatchRunner:
    """Runs every unfinished batch of ``store`` through the router's ``proxy``, once it listens."""

    def __init__(
        self,
        store: BatchStore,
        registry: Registry,
        admissions: Mapping[str, Admission],
        cfg: RouterConfig,
        proxy: Callable[[], Proxy | None],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.admissions = admissions
        self.cfg = cfg
        #: The router's proxy (made when the router starts, hence looked up each time).
        self._proxy = proxy
        self._clock = clock
        self._rng = rng or random.Random()
        self.writer = ResultWriter(store)
        self._runs: dict[str, _Run] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lanes: dict[str, _Lane] = {}
        self._background: list[asyncio.Task[None]] = []
        self._listening = False
        self._draining = False
        #: Batches kept in each status (read from the store after each change).
        self._by_status: dict[str, int] = {}
        #: Requests of batches that got their outcome since this router started.
        self.requests_completed = 0
        self.requests_failed = 0

    # Lifecycle ----------------------------------------------------------------------

    async def start(self, base_url: str) -> None:
        """The router listens at ``base_url``: start sending; resume unfinished batches."""
        self._listening = True
        for coro, name in (
            (self.writer.run(), "gpufleet-batch-writer"),
            (self._sweep(), "gpufleet-batch-sweep"),
            (self._look(), "gpufleet-batch-look"),
        ):
            self._background.append(asyncio.create_task(_logged(coro, name), name=name))
        await self._recount()
        unfinished = await self.store.unfinished_batches()
        if unfinished:
            log.info("resuming %d unfinished batch(es)", len(unfinished))
        for record in unfinished:
            self.launch(record)

    def launch(self, record: BatchRecord) -> None:
        """Run ``record`` (a new batch, or one to resume)."""
        if record.id in self._tasks or not self._listening:
            return  # running, or not listening yet: ``start`` resumes it
        pool, _ = self.registry.resolve(record.endpoint)
        run = _Run(record, pool.name)
        self._runs[record.id] = run
        task = asyncio.create_task(self._run(run), name=f"gpufleet-batch-{record.id}")
        self._tasks[record.id] = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.pop(record.id, None)
            self._runs.pop(record.id, None)

        task.add_done_callback(done)

    def drain(self) -> None:
        """The router drains: send no more requests (those in flight finish)."""
        self._draining = True
        for lane in self._lanes.values():
            lane.endpoint.paused_until = math.inf

    async def aclose(self) -> None:
        """Stop every batch where it is (they resume at the next start), store what came."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._background:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.writer.flush()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        self._listening = False

    # What others ask ----------------------------------------------------------------

    async def cancel(self, batch_id: str) -> BatchRecord | None:
        """Mark the batch cancelling and stop it; None when it is not running or queued."""
        record = await self.store.update_batch(
            batch_id, status=CANCELLING, cancelling_at=int(self._clock())
        )
        if record is None:
            return None
        await self._recount()
        run = self._runs.get(batch_id)
        if run is not None:
            run.record = record
            run.stop.set()
        else:
            self.launch(record)
        return record

    def stats(self) -> dict[str, Any]:
        """The ``batches`` part of the router's ``/stats``."""
        return {
            "in_progress": len(self._runs),
            "batches": [run.progress() for run in self._runs.values()],
            "windows": {
                name: {
                    "limit": lane.endpoint.slots,
                    "in_flight": lane.endpoint.in_flight,
                    "queued": lane.queued,
                }
                for name, lane in self._lanes.items()
            },
            "by_status": dict(sorted(self._by_status.items())),
            "requests": {"completed": self.requests_completed, "failed": self.requests_failed},
        }

    def metrics(self) -> Iterator[Metric]:
        """The Batch API's Prometheus metrics (read at scrape time, like ``/stats``)."""
        by_status = GaugeMetricFamily(
            "gpufleet_batches", "Batches kept, by status.", labels=["status"]
        )
        for status in sorted(FINISHED | UNFINISHED):
            by_status.add_metric([status], self._by_status.get(status, 0))
        requests = CounterMetricFamily(
            "gpufleet_batch_requests",
            "Batch requests that got their outcome since the router started, by outcome.",
            labels=["outcome"],
        )
        requests.add_metric(["completed"], self.requests_completed)
        requests.add_metric(["failed"], self.requests_failed)
        in_flight = GaugeMetricFamily(
            "gpufleet_batch_requests_in_flight",
            "Batch requests sent and not yet answered, by pool.",
            labels=["pool"],
        )
        for name, lane in sorted(self._lanes.items()):
            in_flight.add_metric([name], lane.endpoint.in_flight)
        yield from (by_status, requests, in_flight)

    async def _recount(self) -> None:
        """Read the batches per status again (after a batch changed status)."""
        try:
            self._by_status = await self.store.batch_counts()
        except asyncio.CancelledError:
            raise
        except Exception:  # the counts wait for the next change; the batch goes on
            log.exception("counting batches failed")

    # One batch ----------------------------------------------------------------------

    async def _run(self, run: _Run) -> None:
        if not await self.store.claim(run.record.id):
            return  # another router runs it (a store shared by several routers)
        try:
            # Read again under the claim: the router that held it may have moved it on.
            fresh = await self.store.get_batch(run.record.id)
            if fresh is not None and fresh.status in UNFINISHED:
                run.record = fresh
                await self._run_claimed(run)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(run.record.id))

    async def _run_claimed(self, run: _Run) -> None:
        record = run.record
        try:
            status = record.status
            if status in (VALIDATING, IN_PROGRESS):
                if status == VALIDATING:
                    record = await self._set(
                        run, status=IN_PROGRESS, in_progress_at=int(self._clock())
                    )
                await self._recount()
                outcome, expired = await self._send_all(run)
            else:
                outcome, expired = (CANCELLED if status == CANCELLING else COMPLETED), []
            await self._finish(run, outcome, expired)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch %s failed", record.id)
            error = {"code": "internal_error", "message": str(exc), "param": None, "line": None}
            with contextlib.suppress(Exception):
                await self.store.update_batch(
                    record.id, status=FAILED, failed_at=int(self._clock()), errors=[error]
                )
        await self._recount()

    async def _set(self, run: _Run, **fields: Any) -> BatchRecord:
        record = await self.store.update_batch(run.record.id, **fields)
        if record is None:
            raise LookupError(f"batch {run.record.id} is gone from the store")
        run.record = record
        return record

    async def _requests(self, file_id: str) -> list[Request]:
        """The input file's requests (read and parsed off the event loop)."""
        checker = LineChecker(max_lines=1 << 62, max_line_bytes=self.cfg.max_body_bytes, keep=True)
        async for chunk in self.store.read_file(file_id):
            await asyncio.to_thread(checker.feed, chunk)
        await asyncio.to_thread(checker.finish)
        assert checker.requests is not None
        return checker.requests

    async def _send_all(self, run: _Run) -> tuple[str, list[Request]]:
        """Send what has no result yet; (outcome, the requests left when it expired)."""
        record = run.record
        requests = await self._requests(record.input_file_id)
        done = await self.store.result_ids(record.id)
        todo = [r for r in requests if r.custom_id not in done]
        run.total = len(requests)
        run.completed, run.failed = record.completed, record.failed
        if done:
            log.info(
                "batch %s: %d of %d have a result; sending the other %d",
                record.id,
                len(done),
                len(requests),
                len(todo),
            )
        left: set[str] = {r.custom_id for r in todo}
        feeder = asyncio.create_task(self._feed(run, todo, left))
        stopped = asyncio.create_task(run.stop.wait())
        try:
            timeout = max(0.0, record.expires_at - self._clock())
            await asyncio.wait({feeder, stopped}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            stopped.cancel()
            if not feeder.done():
                feeder.cancel()
            await asyncio.gather(feeder, stopped, return_exceptions=True)
        if not feeder.cancelled():
            feeder.result()  # raises what broke it
        if run.stop.is_set():
            return CANCELLED, []
        if feeder.cancelled():
            return EXPIRED, [r for r in requests if r.custom_id in left]
        return COMPLETED, []

    async def _feed(self, run: _Run, todo: list[Request], left: set[str]) -> None:
        """Send ``todo`` as one job of the pool's dispatcher; record each outcome as it comes."""
        lane = self._lane(run.pool)
        self._follow(lane, run.pool)
        items = [Item(_Sent(r, new_id("batch_req_")), id=r.custom_id) for r in todo]
        #: The last answer of a request that failed in a way that may pass.
        last: dict[str, bytes] = {}

        async def attempt(ep: Endpoint, item: Item, budget_s: float) -> Answer:
            sent: _Sent = item.input
            run.in_flight += 1
            self._follow(lane, run.pool)
            try:
                ok, line = await self._attempt(run, sent.request, sent.row_id)
            except _Retry as exc:
                if exc.line is not None:
                    last[sent.request.custom_id] = exc.line
                raise
            finally:
                run.in_flight -= 1
                self._follow(lane, run.pool)
            return Answer(_Outcome(ok, line))

        async def probe(ep: Endpoint) -> ProbeOutcome:
            pool = self.registry.pools.get(run.pool)
            running = self._proxy() is not None and self._listening
            return "up" if running and pool is not None and pool.ready else "down"

        # The batch waits for its completion window, not for the client's default; a
        # minute past it, so that the expiry (``_send_all``), not this, ends the wait.
        window_s = max(1.0, run.record.expires_at - self._clock()) + 60.0
        cfg = ClientConfig(
            max_attempts=MAX_ATTEMPTS,
            retry_base_s=BACKOFF_BASE_S,
            retry_max_s=BACKOFF_MAX_S,
            unavailable_timeout=window_s,
        )
        job = Dispatcher(
            [lane.endpoint],
            cfg,
            attempt,
            probe,
            rng=self._rng,
            cond=lane.cond,
            fresh=not lane.jobs,
            busy_is_attempt=False,
            item_log_level=logging.DEBUG,
        )
        lane.jobs.add(job)
        try:
            async with contextlib.aclosing(job.run(items)) as results:
                async for result in results:
                    self._record(run, todo[result.index], items[result.index], result, last, left)
        finally:
            lane.jobs.discard(job)

    def _record(
        self,
        run: _Run,
        request: Request,
        item: Item,
        result: Result,
        last: dict[str, bytes],
        left: set[str],
    ) -> None:
        left.discard(request.custom_id)
        run.done_here += 1
        answer = result.output
        if isinstance(answer, _Outcome):
            ok, line = answer.ok, answer.line
        else:  # failed after its attempts: its last answer, else why
            ok = False
            kept = last.pop(request.custom_id, None)
            error = {"code": "request_failed", "message": result.error or "failed"}
            line = kept or output.result_line(item.input.row_id, request.custom_id, error=error)
        if ok:
            run.completed += 1
            self.requests_completed += 1
        else:
            run.failed += 1
            self.requests_failed += 1
        self.writer.add(run.record.id, ResultRow(request.custom_id, request.line, ok, line))

    async def _attempt(self, run: _Run, request: Request, row_id: str) -> tuple[bool, bytes]:
        """One request through the router's proxy: (ok, the result line); ``ServerBusy``
        when it was not started, ``_Retry`` when it failed in a way that may pass."""
        proxy = self._proxy()
        if proxy is None or not self._listening:
            raise _Retry("the router is not running")
        headers = {
            wire.PRIORITY_HEADER: BATCH,
            wire.REQUEST_ID_HEADER: row_id,
            "Content-Type": wire.JSON_CONTENT_TYPE,
        }
        body = json.dumps(request.body, separators=(",", ":")).encode()
        answer = await proxy.call("POST", request.url, headers, body)
        if "/v1/" in request.url:
            openai_shaped(answer)  # as a caller of /v1/… gets the router's own errors
        status = answer.status
        answer_headers = answer.headers
        data = answer.body if isinstance(answer.body, bytes) else b""
        request_id = answer_headers.get(wire.REQUEST_ID_HEADER, row_id)
        line = output.result_line(
            row_id, request.custom_id, status=status, request_id=request_id, body=data
        )
        if 200 <= status < 300:
            return True, line
        retry_after = wire.parse_retry_after(answer_headers.get("Retry-After"))
        if status == 429 or (status == 503 and retry_after is not None and _not_now(data)):
            wait_s = min(max(retry_after or 1.0, BUSY_MIN_S), BUSY_MAX_S)
            raise ServerBusy(f"HTTP {status}: not started", status=status, retry_after_s=wait_s)
        blamed = answer_headers.get(wire.FAULT_HEADER) == wire.FAULT_REQUEST
        if (status >= 500 and not blamed) or status == 408:
            raise _Retry(f"HTTP {status}", line)
        return False, line

    async def _finish(self, run: _Run, outcome: str, expired: list[Request]) -> None:
        """Assemble the output and error files and set the final state, all at once."""
        record = run.record
        now = int(self._clock())
        if outcome == COMPLETED and record.status != FINALIZING:
            record = await self._set(run, status=FINALIZING, finalizing_at=now)
        await self.writer.flush()
        extra = [
            (
                r.line,
                output.result_line(new_id("batch_req_"), r.custom_id, error=_EXPIRED_ERROR),
            )
            for r in expired
        ]
        out, err = await output.assemble(self.store, record.id, extra)
        outputs: list[tuple[FileRecord, Path]] = []
        fields: dict[str, Any] = {"status": outcome, f"{outcome}_at": now}
        for sink, kind, key in ((out, "output", "output_file_id"), (err, "error", "error_file_id")):
            if sink.lines:
                file = FileRecord(
                    new_id("file-"),
                    PURPOSE_OUTPUT,
                    f"{record.id}_{kind}.jsonl",
                    sink.bytes,
                    now,
                    lines=sink.lines,
                )
                outputs.append((file, sink.path))
                fields[key] = file.id
            else:
                await asyncio.to_thread(sink.path.unlink)
        if expired:
            # The counts the writer committed, not the ones this run started from.
            fresh = await self.store.get_batch(record.id)
            fields["failed"] = (fresh or record).failed + len(expired)
        await self.store.finish_batch(record.id, outputs, **fields)
        log.info(
            "batch %s %s: %d ok, %d failed%s",
            record.id,
            outcome,
            run.completed,
            run.failed,
            f", {len(expired)} expired" if expired else "",
        )

    # Capacity and retention ---------------------------------------------------------

    def _lane(self, pool: str) -> _Lane:
        lane = self._lanes.get(pool)
        if lane is None:
            lane = self._lanes[pool] = _Lane(pool)
            if self._draining:
                lane.endpoint.paused_until = math.inf
        return lane

    def _follow(self, lane: _Lane, pool: str) -> None:
        """Set the pool endpoint's slots to what the pool can take now."""
        lane.endpoint.slots = self._capacity(pool)

    def _capacity(self, pool_name: str) -> int:
        """What the pool's batch requests in flight may be: its batch caps plus a quarter."""
        pool = self.registry.pools.get(pool_name)
        admission = self.admissions.get(pool_name)
        if pool is None or admission is None:
            return 1
        caps = sum(admission.batch_cap(u) for u in pool.ready)
        return max(1, min(self.cfg.batch_max_in_flight, caps + max(2, caps // 4)))

    async def _look(self) -> None:
        """Now and then: take over the unfinished batches no router holds (their router
        died, or stopped), and stop ours that another router was asked to cancel."""
        while True:
            await asyncio.sleep(LOOK_EVERY_S)
            if self._draining:
                continue
            for record in await self.store.unfinished_batches():
                run = self._runs.get(record.id)
                if run is None:
                    self.launch(record)  # runs it only if its claim is free
                elif record.status == CANCELLING and not run.stop.is_set():
                    run.record = record
                    run.stop.set()

    async def _sweep(self) -> None:
        """Delete files and finished batches past the retention time, now and then."""
        retention_s = self.cfg.batch_retention_h * 3600
        every_s = min(3600.0, max(1.0, retention_s / 4))
        while True:
            batches, files = await self.store.sweep(int(self._clock() - retention_s))
            if batches or files:
                log.info("retention: deleted %d batch(es) and %d file(s)", batches, files)
                await self._recount()
            await asyncio.sleep(every_s)


def _not_now(body: bytes) -> bool:
    """True when a 503 says the request was not started (a gpufleet error name says so)."""
    try:
        data = wire.decode_json(body)
    except ValueError:
        return False
    return wire.error_name(data) in _NOT_NOW  # our shape or OpenAI's (/v1/…)


async def _logged(coro: Any, name: str) -> None:
    """Run a long-lived task; a crash is logged (it would otherwise vanish)."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s stopped", name)
