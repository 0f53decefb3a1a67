"""Active health probes with hysteresis; learning a gpufleet worker's batch size.

Every ``interval_s`` each upstream gets ``GET <health_path>`` through a
:class:`~gpufleet.wire.http.PeerClient` with connections of its own (two per upstream,
kept alive between rounds), so a busy inference path never makes a live worker look
dead. A new upstream takes traffic after its first good probe; a ready one is ejected
after ``eject_after`` failed probes in a row; an ejected one keeps being probed and comes
back after ``readmit_after`` good ones (and not before its passive ejection time is over).

When the upstream answers with ``X-Gpufleet-Worker`` and no fixed ``--max-outstanding``
was given, its cap becomes ``BATCHES_IN_FLIGHT`` times its ``/stats`` ``max_batch_size``
each time it turns ready: one batch on the device and the next one forming in its queue.
With a cap of one batch the device idles for a router round trip after every batch
(measured in docs/performance.md: 0.85 of a 10 ms worker's throughput alone, 0.66 for
eight); a second batch hides that, and the capacity policy still keeps a slow worker from
hoarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from gpufleet import wire
from gpufleet.errors import RequestFailed
from gpufleet.router import engines
from gpufleet.router.pool import Registry
from gpufleet.router.upstream import DRAINING, EJECTED, READY, REMOVED, STARTING, Upstream
from gpufleet.wire.http import PeerClient

log = logging.getLogger("gpufleet.router.health")

#: Batches a gpufleet worker may have in flight from this router (see the module doc).
BATCHES_IN_FLIGHT = 2
#: The largest ``/stats`` answer read from an upstream.
MAX_STATS_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """How upstreams are probed."""

    interval_s: float = 1.0
    timeout_s: float = 1.0
    path: str = "/health"
    eject_after: int = 3
    readmit_after: int = 2


class HealthChecker:
    """Probes every upstream of ``registry`` until ``aclose()``."""

    def __init__(
        self,
        registry: Registry,
        settings: HealthSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._clock = clock
        self._http: PeerClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        #: Called after each round of probes (the router sweeps idle connections).
        self.on_round: Callable[[], object] | None = None
        #: Upstreams whose probe path answered 404 (said once each: a wrong --health-path).
        self._told_404: set[str] = set()

    async def start(self) -> None:
        """Open the probes' connections and start the probe loop."""
        self._http = PeerClient(
            timeout_s=self.settings.timeout_s,
            max_bytes=MAX_STATS_BYTES,
            connections_per_host=2,
        )
        self._task = asyncio.create_task(self._loop(), name="gpufleet-health")

    async def aclose(self) -> None:
        """Stop probing and close the probe connections."""
        tasks = [t for t in (self._task, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.aclose()

    def probe_soon(self, upstream: Upstream) -> None:
        """Probe ``upstream`` now rather than at the next round (a new upstream)."""
        task = asyncio.create_task(self.probe(upstream))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _loop(self) -> None:
        interval = self.settings.interval_s
        while True:
            started = self._clock()
            try:
                upstreams = [u for u in self.registry.all() if u.state != DRAINING]
                await asyncio.gather(*(self.probe(u) for u in upstreams))
                engines_ = [u for u in upstreams if u.engine == "vllm" and u.cap_from_stats]
                if engines_ and self._http is not None:
                    http = self._http
                    await asyncio.gather(*(engines.poll(http, u) for u in engines_))
                if self.on_round is not None:
                    self.on_round()
            except Exception:  # a bug in a probe must not stop health checking
                log.exception("health round failed")
            await asyncio.sleep(max(0.0, interval - (self._clock() - started)))

    async def probe(self, upstream: Upstream) -> None:
        """Probe ``upstream`` once and move it between states as the counts say."""
        if self._http is None:
            raise RuntimeError("HealthChecker.start() first")
        ok = False
        is_gpufleet = False
        why = ""
        try:
            answer = await self._http.request("GET", upstream.base + self.settings.path)
        except RequestFailed as exc:
            why = f"{self.settings.path}: {exc.message}"
            log.debug("probe of %s failed: %s", upstream.url, why)
        else:
            ok = answer.is_ok
            is_gpufleet = wire.SERVER_HEADER in answer.headers
            if not ok:
                why = f"{self.settings.path} answered {answer.status} {_reason(answer.body)}"
            if answer.status == 404 and upstream.url not in self._told_404:
                self._told_404.add(upstream.url)
                log.warning(
                    "%s: GET %s → 404: set --health-path (gpufleet up: --ready-path) to a"
                    " path that answers 200 when it is ready",
                    upstream.url,
                    self.settings.path,
                )
        if upstream.state == REMOVED:
            return
        if ok:
            await self._passed(upstream, is_gpufleet)
        else:
            self._failed(upstream, why)

    async def _passed(self, upstream: Upstream, is_gpufleet: bool) -> None:
        upstream.consecutive_fails = 0
        upstream.consecutive_oks += 1
        state = upstream.state
        # A passive ejection lasts its window, unless nothing else in the pool is ready:
        # after an outage, the first upstream that passes its probes is let back at once.
        readmit = state == STARTING or (
            state == EJECTED
            and upstream.consecutive_oks >= self.settings.readmit_after
            and (
                self._clock() >= upstream.ejected_until
                or not self.registry.pool(upstream.pool).ready
            )
        )
        if not readmit:
            return
        upstream.is_gpufleet = is_gpufleet
        if is_gpufleet and upstream.cap_from_stats:
            await self._learn_cap(upstream)
        elif upstream.cap_from_stats and not upstream.engine and self._http is not None:
            await engines.discover(self._http, upstream)
        if upstream.state == state:  # nothing changed it while /stats was read
            log.info(
                "%s is ready (%s, max_outstanding=%d)",
                upstream.url,
                "gpufleet worker" if is_gpufleet else f"{upstream.engine or 'http'} server",
                upstream.max_outstanding,
            )
            self.registry.set_state(upstream, READY)

    def _failed(self, upstream: Upstream, why: str) -> None:
        upstream.consecutive_oks = 0
        upstream.consecutive_fails += 1
        if upstream.consecutive_fails < self.settings.eject_after:
            return
        if upstream.state == READY:
            log.warning(
                "ejecting %s: %d failed probes (%s)",
                upstream.url,
                upstream.consecutive_fails,
                why,
            )
            self.registry.set_state(upstream, EJECTED)
        if upstream.state == EJECTED and upstream.waiting:
            # Probes say it is gone (frozen, wedged, dead): the requests waiting on it
            # will not be answered. Free them now rather than at their timeouts.
            n = upstream.abandon_waiting(
                f"{upstream.url} failed {upstream.consecutive_fails} probes"
            )
            log.warning("%s: %d waiting request(s) taken back", upstream.url, n)

    async def _learn_cap(self, upstream: Upstream) -> None:
        if self._http is None:
            return
        try:
            stats = await self._http.get(upstream.base + "/stats", into=wire.WorkerCapacity)
        except RequestFailed as exc:
            log.warning("could not read /stats of %s: %s", upstream.url, exc.message)
            return
        size = stats.max_batch_size
        if size >= 1 and stats.server == wire.WORKER_SERVER_NAME:
            upstream.max_outstanding = BATCHES_IN_FLIGHT * size


def _reason(body: bytes) -> str:
    """A short reason from a failed probe's body (``{"status": …, "reason": …}``)."""
    try:
        health = msgspec.json.decode(body, type=wire.HealthBody)
    except (msgspec.DecodeError, RecursionError):  # another server's page, not ours
        return body[:300].decode("utf-8", "replace").strip()[:120]
    return " ".join(v for v in (health.status, health.reason) if v)[:200]
