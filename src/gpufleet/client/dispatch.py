"""Pull-based dispatch: every endpoint takes the next item whenever it has a free slot.

One shared queue holds the items. Each endpoint has one puller task per job: while the
endpoint has room (``slots``, or the cap it learnt from "busy" answers) it takes the next
ready item and sends it in a task of its own, so a fast endpoint does more and a slow one
never holds a backlog. ``slots`` is read each time, so its owner may change it while a
job runs (the batch runner follows its pool's capacity). A completion wakes one puller
per endpoint and job, not one task per slot. A retryable failure puts the item back at
the front of the queue with an exponential back-off, preferring another endpoint; an
endpoint that fails ``failure_threshold`` times in a row is cooled down and must pass a
probe before it takes items again. Near the end of a job a slow endpoint declines an item
that the faster ones would finish sooner (the straggler problem of static splits).

Two users drive it: ``Client`` (endpoints are URLs, the attempt an HTTP POST) and the
router's ``batches.runner.BatchRunner`` (one endpoint per pool, the attempt a call into
the router's own proxy; a "busy" answer there is not an attempt, ``busy_is_attempt``).

``round_robin.RoundRobinDispatcher`` is the old ``itertools.cycle`` split, kept for
comparison: the same machinery with another ``_choose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from gpufleet.client._transport import ServerBusy as ServerBusy  # attempts raise it
from gpufleet.client.endpoints import Endpoint
from gpufleet.client.items import Answer, Item, Result
from gpufleet.config.client import ClientConfig
from gpufleet.errors import RequestFailed

log = logging.getLogger("gpufleet.client")

#: The shortest wait: one computed as a float difference (0.15000000000000002 - 0.15)
#: must not come back before the clock moved, forever, on a clock that moves in steps.
_MIN_WAIT_S = 1e-6

#: Sends one item to one endpoint within a timeout.
Attempt = Callable[[Endpoint, Item, float], Awaitable[Answer]]
#: What a health check of an endpoint found: ``up``; ``down`` (it answered, not ready:
#: a router with no worker yet); ``silent`` (no answer at all: nothing listens, or hung).
ProbeOutcome = Literal["up", "down", "silent"]
#: Checks an endpoint's health.
Probe = Callable[[Endpoint], Awaitable[ProbeOutcome]]


@dataclass(slots=True, eq=False)
class _Work:
    index: int
    item: Item
    attempts: int = 0
    not_before: float = 0.0
    avoid: Endpoint | None = None
    avoid_until: float = 0.0
    started: float | None = None
    tried: list[str] = field(default_factory=list)


class Dispatcher:
    """Runs one job's items over ``endpoints``, each free slot pulling the next; single use.

    ``cond`` is shared by concurrent jobs over the same ``Endpoint`` objects; ``fresh``
    says that no other job is running, so per-job endpoint state may be reset. With
    ``busy_is_attempt`` False a "busy" answer (``ServerBusy``: the request was not
    started) pauses the endpoint but costs the item no attempt: it waits for room for as
    long as the job lasts. Made in a running loop, whose ``time`` is the clock unless one
    is given.
    """

    def __init__(
        self,
        endpoints: list[Endpoint],
        cfg: ClientConfig,
        attempt: Attempt,
        probe: Probe,
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        cond: asyncio.Condition | None = None,
        fresh: bool = True,
        busy_is_attempt: bool = True,
        item_log_level: int = logging.INFO,
    ) -> None:
        self._eps = endpoints
        self._cfg = cfg
        self._attempt = attempt
        self._probe = probe
        # The loop's clock by default (monotonic, as the timeouts here): a test's virtual
        # loop time (looptime) moves it too.
        self._clock = clock or asyncio.get_running_loop().time
        self._rng = rng or random.Random()
        # Shared by every job of one Client, so that the endpoints' slots are shared too:
        # a completion in one job wakes the pullers of the others.
        self._cond = cond or asyncio.Condition()
        self._fresh = fresh
        self._busy_is_attempt = busy_is_attempt
        #: Level of the lines logged per item sent, done or retried (the router's batch
        #: runner: DEBUG; two INFO lines per request cost its process CPU it lacks).
        self._item_level = item_log_level
        self._pending: deque[_Work] = deque()
        self._results: asyncio.Queue[Result | BaseException] = asyncio.Queue()
        self._left = 0
        self._deadline: float | None = None
        self._down_since: float | None = None

    async def run(self, items: list[Item]) -> AsyncGenerator[Result, None]:
        """Yield one ``Result`` per item, in the order they finish."""
        if not items:
            return
        now = self._clock()
        self._deadline = None if self._cfg.deadline is None else now + self._cfg.deadline
        self._queue([_Work(i, item) for i, item in enumerate(items)])
        self._left = len(items)
        if self._fresh:  # no other job of this client is running: forget stale state
            for ep in self._eps:
                ep.probing, ep.limit, ep.since_limit = False, None, 0
        # One puller per endpoint; with several, each yields after a take, so the first
        # items spread over every endpoint instead of filling the first one's slots. With
        # one it fills every free slot at once (yielding after each take held a batch
        # runner's refill after a device batch back by one loop turn per request).
        tasks = [
            asyncio.create_task(self._guard(self._pull(ep)), name=f"gpufleet-pull-{ep.url}")
            for ep in self._eps
        ]
        tasks.append(asyncio.create_task(self._guard(self._watchdog()), name="gpufleet-watch"))
        emitted = 0
        try:
            while emitted < len(items):
                result = await self._results.get()
                if isinstance(result, BaseException):
                    raise result
                emitted += 1
                yield result
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def pending(self) -> int:
        """Items queued and not yet sent (or back for a retry)."""
        return len(self._pending)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        # A bug in a slot must end the job loudly rather than leave it waiting forever.
        try:
            await coro
        except Exception as exc:
            log.exception("dispatcher task failed")
            self._results.put_nowait(exc)

    async def _wait(self, wait_s: float | None) -> None:
        if wait_s is not None and math.isinf(wait_s):
            wait_s = None  # paused for good (a draining router): only a change wakes it
        if wait_s is not None:
            wait_s = max(wait_s, _MIN_WAIT_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._cond.wait()

    async def _pull(self, ep: Endpoint) -> None:
        """Take items for ``ep`` while it has room; each is sent in a task of its own."""
        sends: set[asyncio.Task[None]] = set()
        try:
            while (work := await self._take(ep)) is not None:
                send = asyncio.create_task(self._send_held(ep, work))
                sends.add(send)
                send.add_done_callback(sends.discard)
                if len(self._eps) > 1:  # the other endpoints' pullers take their turn
                    await asyncio.sleep(0)
            while sends:  # every item is done; nothing is left in flight, but be sure
                await asyncio.wait(set(sends))
        finally:
            for send in sends:
                send.cancel()
            await asyncio.gather(*sends, return_exceptions=True)

    async def _send_held(self, ep: Endpoint, work: _Work) -> None:
        try:
            await self._guard(self._send(ep, work))
        finally:
            ep.in_flight -= 1

    async def _take(self, ep: Endpoint) -> _Work | None:
        while True:
            async with self._cond:
                while True:
                    if self._left == 0:
                        return None
                    now = self._clock()
                    wait: float | None
                    if ep.needs_probe:
                        if not ep.probing and now >= ep.cooldown_until:
                            ep.probing = True
                            break
                        wait = None if ep.probing else ep.cooldown_until - now
                    else:
                        work, wait = self._pick(ep, now)
                        if work is not None:
                            self._pending.remove(work)
                            ep.in_flight += 1
                            return work
                    await self._wait(wait)
            outcome = await self._probe(ep)
            async with self._cond:
                cfg = self._cfg
                ep.record_probe(
                    outcome == "up",
                    self._clock(),
                    base_s=cfg.cooldown_base_s,
                    max_s=cfg.cooldown_max_s,
                )
                if outcome == "silent" and not any(e.is_reachable() for e in self._eps):
                    self._count_waiting(ep)
                self._cond.notify_all()

    def _pick(self, ep: Endpoint, now: float) -> tuple[_Work | None, float | None]:
        """The next item ``ep`` should take now, else how long until that may change."""
        if ep.paused_until > now:
            return None, ep.paused_until - now
        if not ep.has_room():
            return None, None  # a completion will wake this slot
        return self._choose(ep, now)

    # How items go to endpoints: the hooks ``RoundRobinDispatcher`` overrides. ------------

    def _queue(self, works: list[_Work]) -> None:
        """Queue a job's items."""
        self._pending.extend(works)

    def _choose(self, ep: Endpoint, now: float) -> tuple[_Work | None, float | None]:
        """The first ready item, unless it avoids ``ep`` or ``ep`` is the straggler."""
        wake: float | None = None
        others_up = any(o is not ep and o.is_usable(now) for o in self._eps)
        for work in self._pending:
            ready_at = work.not_before
            if work.avoid is ep and others_up:
                ready_at = max(ready_at, work.avoid_until)
            if ready_at > now:
                wake = ready_at - now if wake is None else min(wake, ready_at - now)
                continue
            if self._should_take(ep, now):
                return work, None
            # Declined as a straggler: look again when a latency changes (a completion).
            return None, wake
        return None, wake

    def _cooled(self, ep: Endpoint) -> None:
        """``ep`` was just cooled down: nothing to move, as no item belongs to it."""

    def _retry_elsewhere(self, work: _Work, ep: Endpoint, now: float, backoff: float) -> None:
        """``work`` failed on ``ep``: prefer another endpoint for a while."""
        work.avoid = ep
        work.avoid_until = now + 2 * backoff + (ep.latency_s or 0.0)

    def _should_take(self, ep: Endpoint, now: float) -> bool:
        """False when the faster endpoints would finish the ready items before ``ep`` did."""
        mine = ep.latency_s
        if mine is None:
            return True
        others = [o for o in self._eps if o is not ep and o.is_usable(now) and o.rate]
        if not others:
            return True
        best = min(o.latency_s or 0.0 for o in others)
        if mine <= best:
            return True
        # Take it when the others could not clear the ready items before ``ep`` is done:
        # ready / rate(others) + best >= mine. Count only as far as that needs, so a job of
        # a million items does not scan its whole queue on every take.
        enough = (mine - best) * sum(o.rate or 0.0 for o in others)
        ready = 0
        for w in self._pending:
            if w.not_before <= now:
                ready += 1
                if ready >= enough:
                    return True
        return False

    async def _send(self, ep: Endpoint, work: _Work) -> None:
        start = self._clock()
        work.attempts += 1
        work.tried.append(ep.url)
        if work.started is None:
            work.started = start
        timeout = self._cfg.timeout
        if self._deadline is not None:
            timeout = max(0.001, min(timeout, self._deadline - start))
        log.log(self._item_level, "item %s → %s (attempt %d)", work.item.id, ep.url, work.attempts)
        try:
            answer = await self._attempt(ep, work.item, timeout)
        except RequestFailed as exc:
            async with self._cond:
                self._on_failure(ep, work, exc)
                self._cond.notify_all()
            return
        end = self._clock()
        log.log(
            self._item_level, "item %s [%s] completed in %.2fs", work.item.id, ep.url, end - start
        )
        async with self._cond:
            ep.record_success(end - start)
            self._finish(work, "ok", ep.url, end, answer=answer)
            self._cond.notify_all()

    def _on_failure(self, ep: Endpoint, work: _Work, exc: RequestFailed) -> None:
        cfg, now = self._cfg, self._clock()
        if isinstance(exc, ServerBusy):
            # The endpoint is up but full: it said when to come back.
            ep.record_busy(now, exc.retry_after_s or cfg.retry_base_s)
            if not self._busy_is_attempt:
                # Not started, so not an attempt: back to the front, once the pause ends.
                work.attempts -= 1
                work.not_before = ep.paused_until
                self._pending.appendleft(work)
                return
        elif exc.retryable:
            cooled = ep.record_failure(
                exc.message,
                now,
                threshold=cfg.failure_threshold,
                base_s=cfg.cooldown_base_s,
                max_s=cfg.cooldown_max_s,
            )
            if cooled:
                self._cooled(ep)
        past_deadline = self._deadline is not None and now >= self._deadline
        if not exc.retryable or work.attempts >= cfg.max_attempts or past_deadline:
            error = exc.message
            if exc.retryable:
                error = f"{error} (gave up after {work.attempts} attempt(s))"
            log.warning("item %s failed: %s", work.item.id, error)
            self._finish(work, "failed", ep.url, now, error=error)
            return
        backoff = min(cfg.retry_base_s * 2 ** (work.attempts - 1), cfg.retry_max_s)
        backoff *= 0.5 + self._rng.random() / 2
        work.not_before = now + backoff
        self._retry_elsewhere(work, ep, now, backoff)
        self._pending.appendleft(work)
        log.log(
            self._item_level,
            "item %s failed on %s (%s); retry %d/%d in %.2fs",
            work.item.id,
            ep.url,
            exc.message,
            work.attempts + 1,
            cfg.max_attempts,
            backoff,
        )

    def _count_waiting(self, ep: Endpoint) -> None:
        """``ep`` did not answer its probe and no endpoint is up: a try for every item.

        Waiting for an endpoint that answers "not ready" (a router whose workers restart)
        costs no attempt; waiting on silence does, so that ``max_attempts`` bounds an item
        against endpoints where nothing listens, at the cool-downs' pace.
        """
        now = self._clock()
        for work in list(self._pending):
            work.attempts += 1
            work.tried.append(ep.url)
            if work.attempts >= self._cfg.max_attempts:
                self._pending.remove(work)
                error = f"gave up after {work.attempts} attempt(s): {ep.last_error}"
                log.warning("item %s failed: %s", work.item.id, error)
                self._finish(work, "failed", ep.url, now, error=error)

    def _finish(
        self,
        work: _Work,
        status: str,
        endpoint: str | None,
        now: float,
        *,
        answer: Answer | None = None,
        error: str | None = None,
    ) -> None:
        self._left -= 1
        self._results.put_nowait(
            Result(
                id=str(work.item.id),
                index=work.index,
                status="ok" if status == "ok" else "failed",
                output=answer.output if answer else None,
                content_type=answer.content_type if answer else "application/json",
                upstream=answer.upstream if answer else None,
                endpoint=endpoint,
                attempts=work.attempts,
                seconds=now - work.started if work.started is not None else 0.0,
                error=error,
                seed=work.item.seed,
                tried=list(work.tried),
            )
        )

    async def _watchdog(self) -> None:
        """Fail what is left when the deadline passes or no endpoint is reachable too long."""
        async with self._cond:
            while self._left > 0:
                now = self._clock()
                if self._deadline is not None and now >= self._deadline:
                    self._fail_pending(f"the job's deadline ({self._cfg.deadline:g}s) passed")
                if any(ep.is_reachable() for ep in self._eps):
                    self._down_since = None
                elif self._down_since is None:
                    self._down_since = now
                elif now - self._down_since >= self._cfg.unavailable_timeout:
                    last = "; ".join(str(e.last_error or f"{e.url}: down") for e in self._eps)
                    self._fail_pending(
                        f"no endpoint reachable for {self._cfg.unavailable_timeout:g}s"
                        f" (--unavailable-timeout): {last}"
                    )
                # Only times still ahead: once one passed and failed what was pending, the
                # items in flight end by their own timeouts (a wait of 0 would spin).
                wakes = [self._deadline - now] if self._deadline is not None else []
                if self._down_since is not None:
                    wakes.append(self._down_since + self._cfg.unavailable_timeout - now)
                ahead = [w for w in wakes if w > 0]
                await self._wait(min(ahead) if ahead else None)

    def _fail_pending(self, reason: str) -> None:
        now = self._clock()
        while self._pending:
            work = self._pending.popleft()
            last = work.tried[-1] if work.tried else None
            self._finish(work, "failed", last, now, error=reason)
        self._cond.notify_all()
