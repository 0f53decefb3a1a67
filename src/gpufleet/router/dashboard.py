"""``GET /dashboard``: one self-contained page, and ``GET /dashboard/stats``, the data it polls.

``/dashboard/stats`` is the router's ``/stats`` with each gpufleet worker's own ``/stats``
(queue, batch size, device, GPU, pid) under ``"worker"`` in its entry, or the reason it
could not be read under ``"worker_error"``. A browser often cannot reach the workers (they
listen on 127.0.0.1 or a private network), so the router reads them: concurrently, each
within ``timeout_s``, and at most once per ``max_age_s`` however many pages poll.
``?history=1`` adds the last five minutes of each upstream's served count and latency,
sampled by the router every two seconds, so a page opened now draws them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gpufleet import wire
from gpufleet._percentile import percentile_ms
from gpufleet.errors import RequestFailed
from gpufleet.router.pool import Registry
from gpufleet.router.stats import stats_payload
from gpufleet.router.upstream import REMOVED, Upstream
from gpufleet.wire.http import PeerClient

if TYPE_CHECKING:
    from gpufleet.router.app import RouterState

log = logging.getLogger("gpufleet.router.dashboard")

PAGE_PATH = "/dashboard"
STATS_PATH = "/dashboard/stats"
#: Seconds of history kept for the charts, and seconds between two samples.
HISTORY_S = 300.0
HISTORY_EVERY_S = 2.0
#: What ``/dashboard/stats`` passes on of a worker's own ``/stats``.
_WORKER_FIELDS = frozenset(wire.WorkerStats.__struct_fields__)


def page() -> bytes:
    """The dashboard page, read from the installed package."""
    return resources.files("gpufleet.router").joinpath("dashboard.html").read_bytes()


class WorkerStatsReader:
    """Each gpufleet upstream's own ``/stats``, read at most once per ``max_age_s``."""

    def __init__(
        self,
        registry: Registry,
        *,
        timeout_s: float = 1.0,
        max_age_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._http: PeerClient | None = None
        self._lock = asyncio.Lock()
        self._read_at = -float("inf")
        self._cache: dict[str, dict[str, Any]] = {}

    async def __aenter__(self) -> WorkerStatsReader:
        self._http = PeerClient(timeout_s=self.timeout_s, connections_per_host=2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections to the workers."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def read(self) -> dict[str, dict[str, Any]]:
        """``{upstream id: {"worker": stats} | {"worker_error": reason}}`` for gpufleet workers."""
        async with self._lock:  # one read at a time: concurrent pages share it
            if self._clock() - self._read_at >= self.max_age_s:
                ups = [u for u in self.registry.all() if u.is_gpufleet and u.state != REMOVED]
                found = await asyncio.gather(*(self._read_one(u) for u in ups))
                self._cache = {u.id: entry for u, entry in zip(ups, found, strict=True)}
                self._read_at = self._clock()
            return self._cache

    async def _read_one(self, upstream: Upstream) -> dict[str, Any]:
        if self._http is None:
            return {"worker_error": "the router is not serving"}
        # PeerClient follows no redirect: an upstream must not make the router read (and
        # show) another address. Its errors say the call, the status and the reason.
        try:
            data = await self._http.get(upstream.base + "/stats", into=dict[str, Any])
        except RequestFailed as exc:
            return {"worker_error": exc.message}
        # Decoded as an object, not as wire.WorkerStats: a worker of another version (a
        # field more or less) is still shown, field by field.
        if data.get("server") != wire.WORKER_SERVER_NAME:
            return {"worker_error": "/stats is not a gpufleet worker's"}
        # Only the fields of a worker's /stats are shown, whatever else it holds.
        return {"worker": {k: v for k, v in data.items() if k in _WORKER_FIELDS}}


class History:
    """Each upstream's served count and p50/p99 over the last ``window_s``, every ``every_s``.

    Only what the router already holds: sampling sends nothing to the workers.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        every_s: float = HISTORY_EVERY_S,
        window_s: float = HISTORY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.every_s = every_s
        self.clock = clock
        self._samples: deque[dict[str, Any]] = deque(maxlen=int(window_s / every_s) + 1)

    def sample(self) -> None:
        """Take one sample: ``{"t": epoch s, "workers": {id: [served, p50 ms, p99 ms]}}``."""
        workers: dict[str, list[float]] = {}
        for u in self.registry.all():
            lat = sorted(u.latencies)
            workers[u.id] = [u.served, percentile_ms(lat, 0.5), percentile_ms(lat, 0.99)]
        self._samples.append({"t": round(self.clock(), 3), "workers": workers})

    def samples(self) -> list[dict[str, Any]]:
        """The samples kept, oldest first."""
        return list(self._samples)

    async def run(self) -> None:
        """Sample every ``every_s`` until cancelled."""
        while True:
            try:
                self.sample()
            except Exception:  # the charts may miss a point; the router must not stop
                log.exception("dashboard history sample failed")
            await asyncio.sleep(self.every_s)  # a clock, not a wait for something


def register(app: web.Application, state: RouterState) -> None:
    """Add ``/dashboard`` and ``/dashboard/stats`` to the router's ``app``."""
    body = page()
    reader = WorkerStatsReader(state.registry)
    history = History(state.registry)

    async def reader_lifecycle(app: web.Application) -> AsyncIterator[None]:
        sampler = asyncio.create_task(history.run(), name="gpufleet-dashboard-history")
        try:
            async with reader:
                yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    app.cleanup_ctx.append(reader_lifecycle)

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def dashboard_stats(request: web.Request) -> web.Response:
        own = await reader.read()
        data = wire.to_builtins(
            stats_payload(
                state.registry,
                state.admissions,
                state.totals,
                policy=state.cfg.policy,
                draining=state.draining,
                active=state.proxy.active if state.proxy is not None else 0,
            )
        )
        for entry in data["workers"]:
            with contextlib.suppress(KeyError):
                entry.update(own[entry["id"]])
        for name, part in state.stats_parts.items():  # batches in progress, when kept here
            data[name] = part()
        data["now"] = round(history.clock(), 3)  # the page charts on the router's clock
        if request.query.get("history") == "1":
            data["history"] = history.samples()
        return web.json_response(data, headers={"Cache-Control": "no-store"})

    app.router.add_get(PAGE_PATH, dashboard)
    app.router.add_get(STATS_PATH, dashboard_stats)


__all__ = ["PAGE_PATH", "STATS_PATH", "History", "WorkerStatsReader", "page", "register"]
