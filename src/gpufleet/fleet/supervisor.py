"""Keep every worker and the router alive; stop them all cleanly.

One keeper task per child starts it, waits until it is ready, probes its liveness, and
after an exit (or too many failed probes: no answer, a 5xx other than 503, or a gpufleet
worker's 503 ``stalled``) restarts it with capped exponential back-off;
a child that keeps failing is shown as crash-looping. The router starts once every
worker is ready or has failed once, with the ready ones as ``--worker``; afterwards its
pool follows the workers through the admin API. Signal handlers only set a flag: the
first stop request drains (the router first, so in-flight requests finish on workers
that are still up, then the workers), a second one kills everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet import wire
from gpufleet.config.fleet import FleetConfig
from gpufleet.errors import AdminError
from gpufleet.fleet.admin import Membership, PoolSync
from gpufleet.fleet.launcher import ChildHandle, Launcher
from gpufleet.fleet.logfile import last_lines, log_size
from gpufleet.fleet.member import (
    BACKOFF,
    CRASH_LOOP,
    READY,
    STARTING,
    STOPPED,
    STOPPING,
    Member,
    backoff_delay,
)
from gpufleet.fleet.process import ChildSpec
from gpufleet.fleet.rundir import write_atomic
from gpufleet.wire.http import PeerClient

log = logging.getLogger("gpufleet.fleet")

#: A liveness answer longer than this is not read for a stall reason (a foreign server).
_MAX_HEALTH_BODY = 64 * 1024

#: Builds the router's spec from the members ready now and the port to listen on.
RouterSpecFactory = Callable[[Sequence[Member], int], ChildSpec]


def describe_exit(code: int | None) -> str:
    """``exit 3`` or ``killed by SIGKILL``."""
    if code is None:
        return "no exit status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


async def _first(*aws: Awaitable[Any], within: float | None = None) -> None:
    """Wait until the first of ``aws`` completes (or ``within`` seconds).

    Coroutines are wrapped in tasks that are cancelled afterwards; futures and tasks
    passed in belong to the caller and are left running.
    """
    tasks = [asyncio.ensure_future(a) for a in aws]
    mine = [t for a, t in zip(aws, tasks, strict=True) if not asyncio.isfuture(a)]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in mine:
            if not t.done():
                t.cancel()
        await asyncio.gather(*mine, return_exceptions=True)


class Supervisor:
    """Runs a fleet until asked to stop; ``request_stop`` is safe to call from a signal handler."""

    def __init__(
        self,
        cfg: FleetConfig,
        workers: Sequence[Member],
        router: Member,
        *,
        launcher: Launcher,
        router_spec: RouterSpecFactory,
        token: str,
        router_port_file: Path,
        endpoint_port_file: Path | None = None,
        publish: Callable[[dict[str, Any]], None] | None = None,
        report: Callable[[str], None] = print,
        ready_hint: str = "",
    ) -> None:
        self.cfg = cfg
        self.workers = list(workers)
        self.router = router
        self._launcher = launcher
        self._router_spec = router_spec
        self._token = token
        self._router_port_file = router_port_file
        self._endpoint_port_file = endpoint_port_file
        self._publish = publish
        self._report = report
        self._ready_hint = ready_hint
        self._router_port = cfg.port
        self.phase = "starting"
        self.forced = False
        self.crashed = False
        #: Why the start failed (a pool with no ready worker, the router never ready).
        self.failed_start: str | None = None
        self._told: set[tuple[str, ...]] = set()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._router_stopped = asyncio.Event()
        self._done = asyncio.Event()
        self._dirty = asyncio.Event()
        self._changed = asyncio.Event()
        self._settle = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    # Signals and state ---------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop gracefully. Second: kill everything now. Only sets flags."""
        if self._stop.is_set():
            self._force.set()
        else:
            self._stop.set()

    @property
    def endpoint(self) -> str:
        """The router's URL."""
        return self.router.spec.url

    def _touch(self) -> None:
        self._dirty.set()
        self._changed.set()
        self._settle.set()

    def snapshot(self) -> dict[str, Any]:
        """The fleet as plain data (the run directory's state file)."""
        now = time.monotonic()
        return {
            "phase": self.phase,
            "endpoint": self.endpoint,
            "policy": self.cfg.policy,
            "router": self.router.row(now),
            "workers": [m.row(now) for m in self.workers],
        }

    # The run -------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> int:
        """Start everything, keep it alive until a stop request; 0 after a clean stop."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            async with aiohttp.ClientSession() as http:
                self._http = http
                await self._run()
        finally:
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            for m in [self.router, *self.workers]:
                if m.handle is not None:
                    await m.handle.aclose()
        return 1 if self.forced or self.crashed or self.failed_start else 0

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            keepers = [tg.create_task(self._keep(m)) for m in self.workers]
            tg.create_task(self._publish_loop())
            await self._wait_settled()
            if self._stop.is_set():
                self._router_stopped.set()
            else:
                keepers.append(tg.create_task(self._keep(self.router)))
                tg.create_task(self._sync_loop())
            await self._stop.wait()
            self.phase = "stopping"
            if self.failed_start:
                self._report(f"gpufleet: not started: {self.failed_start}")
            else:
                self._report(
                    "gpufleet: stopping (the router first, then the workers); again to force"
                )
            self._touch()
            await _first(asyncio.shield(asyncio.gather(*keepers)), self._force.wait())
            if self._force.is_set():
                self.forced = True
                self._report("gpufleet: forced stop: killing every process")
                await asyncio.gather(*keepers)
            self.phase = "stopped"
            self._touch()
            self._done.set()
        alive = [m.name for m in [self.router, *self.workers] if m.pid is not None]
        self._report(f"gpufleet: stopped; processes still alive: {', '.join(alive) or 'none'}")

    async def _wait_settled(self) -> None:
        while not self._stop.is_set() and not all(m.settled for m in self.workers):
            self._settle.clear()
            self._check_pools()
            if self._stop.is_set():
                return
            await _first(self._settle.wait(), self._stop.wait())
        self._check_pools()

    def _check_pools(self) -> None:
        """Stop the start when every worker of a pool has failed and none was ever ready."""
        pools: dict[str, list[Member]] = {}
        for w in self.workers:
            pools.setdefault(w.pool, []).append(w)
        for pool, members in pools.items():
            if all(w.settled and not w.ever_ready for w in members):
                self._fail_start(f"no worker of pool {pool} became ready")
                return

    def _fail_start(self, why: str) -> None:
        if self.failed_start is None and not self._stop.is_set():
            self.failed_start = why
            self._stop.set()

    async def _tell_start_failure(self, m: Member) -> None:
        """Say why ``m`` did not start: its status and the last lines it wrote."""
        lines = await asyncio.to_thread(last_lines, m.spec.log_path, m.log_offset)
        # The same lines from every worker of a pool are said once (timestamps, pids apart).
        key = (m.pool, *(re.sub(r"\d+", "#", line) for line in lines))
        if key in self._told:
            self._report(f"gpufleet: {m.name}: {m.last_error} (the same lines)")
            return
        self._told.add(key)
        where = f"its last lines ({m.spec.log_path}):" if lines else f"nothing in {m.spec.log_path}"
        self._report(f"gpufleet: {m.name}: {m.last_error}; {where}")
        for line in lines:
            self._report(f"  | {line}")

    # One child -----------------------------------------------------------------------

    async def _keep(self, m: Member) -> None:
        try:
            while not self._stop.is_set():
                outcome = await self._run_once(m)
                if outcome == "stopping" or not await self._back_off(m):
                    break
        except Exception:
            # A bug here must not leave a child unsupervised: stop the fleet, loudly.
            log.exception("supervising %s failed; stopping the fleet", m.name)
            self.crashed = True
            self._stop.set()
        finally:
            await self._stop_member(m)
            if m.role == "router":
                self._router_stopped.set()

    def _spec_for(self, m: Member) -> ChildSpec:
        if m.role != "router":
            return m.spec
        ready = [w for w in self.workers if w.state == READY]
        self._router_port_file.unlink(missing_ok=True)
        m.spec = self._router_spec(ready, self._router_port)
        return m.spec

    async def _run_once(self, m: Member) -> str:
        spec = self._spec_for(m)
        m.state, m.next_try_at, m.started_at = STARTING, None, time.monotonic()
        m.log_offset = await asyncio.to_thread(log_size, spec.log_path)
        self._touch()
        # A remote launcher may wait long for room on the cluster (Ray): a stop ends that.
        starting = asyncio.ensure_future(self._launcher.start(spec))
        await _first(starting, self._stop.wait())
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                late = await starting  # it finished before the cancel reached it
                await late.aclose()
            return "stopping"
        try:
            handle = starting.result()
        except OSError as exc:
            why = exc.strerror or str(exc)
            m.last_error, m.last_exit = f"cannot start {spec.argv[0]}: {why}", None
            if not m.ever_ready:
                self._report(f"gpufleet: {m.name}: {m.last_error}")
                if m.role == "router":
                    self._fail_start("the router could not be started")
            return "failed"
        m.handle, m.spec = handle, handle.spec
        log.info("%s started (pid %d): %s", m.name, handle.pid, " ".join(spec.argv))
        outcome = await self._until_ready(m, handle)
        if outcome == "ready":
            m.state, m.ready_since, m.settled = READY, time.monotonic(), True
            m.ever_ready = True
            if m.started_at is not None:
                took = m.ready_since - m.started_at
                log.info("%s ready at %s (pid %d, %.1fs)", m.name, m.url, handle.pid, took)
            self._touch()
            if m.role == "router":
                self._router_ready()
            outcome = await self._watch(m, handle)
            if time.monotonic() - m.ready_since >= self.cfg.backoff_reset_s:
                m.failures = 0
        m.ready_since = None
        if outcome == "stopping":
            return outcome
        if handle.returncode is None:  # hung or never ready: no drain for it
            await handle.stop(0.0, self.cfg.kill_timeout_s)
        await handle.aclose()
        m.last_exit = handle.returncode
        if not m.ever_ready and m.failures == 0 and not self._stop.is_set():
            await self._tell_start_failure(m)
            if m.role == "router":
                self._fail_start("the router did not start")
        return "failed"

    def _router_ready(self) -> None:
        self._router_port = self.router.spec.port
        if self.phase == "starting":
            self.phase = "running"
            if self._endpoint_port_file is not None:
                write_atomic(self._endpoint_port_file, f"{self._router_port}\n")
            ready = sum(1 for w in self.workers if w.state == READY)
            self._report(
                f"gpufleet: ready at {self.endpoint} ({ready}/{len(self.workers)} workers)"
            )
            if self._ready_hint:
                hint = self._ready_hint.replace("{endpoint}", self.endpoint)
                self._report(f"  try: {hint}")

    async def _status(self, url: str, budget_s: float) -> int | None:
        status, _ = await self._probe(url, budget_s)
        return status

    async def _probe(self, url: str, budget_s: float) -> tuple[int | None, str | None]:
        """``GET url``'s status (None: no answer) and, when a gpufleet worker answers 503
        ``stalled``, its reason."""
        if self._http is None:
            return None, None
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=budget_s)) as r:
                stalled = None
                size = r.content_length  # a gpufleet worker always sends one
                if r.status == 503 and size is not None and size <= _MAX_HEALTH_BODY:
                    stalled = wire.stall_reason(await r.read())
                return int(r.status), stalled
        except (aiohttp.ClientError, TimeoutError):
            return None, None

    async def _learn_router_port(self, m: Member) -> bool:
        """True once ``m`` may be probed: the router only once it wrote its port file.

        Probing a fixed port before then could reach another server holding it.
        """
        if m.role != "router":
            return True
        with contextlib.suppress(FileNotFoundError, ValueError):
            text = self._router_port_file.read_text().strip()
            if text and (m.spec.port in (0, int(text))):
                m.spec = _with_port(m.spec, int(text))
                return True
        return False

    async def _until_ready(self, m: Member, handle: ChildHandle) -> str:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        exited = asyncio.ensure_future(handle.wait())
        pause = 0.05
        told_404 = False
        try:
            while True:
                if self._stop.is_set():
                    return "stopping"
                if exited.done():
                    m.last_error = f"{describe_exit(exited.result())} while starting"
                    return "exited"
                if await self._learn_router_port(m):
                    status = await self._status(m.url + m.ready_path, 2.0)
                    # The router answering at all is ready: its /health may say "no worker".
                    if status == 200 or (m.role == "router" and status is not None):
                        return "ready"
                    if status == 404 and m.role != "router" and not told_404:
                        told_404 = True
                        log.warning(
                            "%s: GET %s → 404: set --ready-path to a path that answers 200"
                            " once the server is ready",
                            m.name,
                            m.ready_path,
                        )
                if time.monotonic() > deadline:
                    m.last_error = f"not ready after {self.cfg.startup_timeout_s:g}s"
                    return "timeout"
                await _first(exited, self._stop.wait(), within=pause)
                pause = min(1.0, pause * 1.5)
        finally:
            exited.cancel()

    async def _watch(self, m: Member, handle: ChildHandle) -> str:
        exited = asyncio.ensure_future(handle.wait())
        misses = 0
        try:
            while True:
                await _first(exited, self._stop.wait(), within=self.cfg.liveness_interval_s)
                if self._stop.is_set():
                    return "stopping"
                if exited.done():
                    m.last_error = describe_exit(exited.result())
                    return "exited"
                url = m.url + m.ready_path
                status, stalled = await self._probe(url, self.cfg.liveness_timeout_s)
                # 503 is alive (loading, busy or draining) unless a gpufleet worker says its
                # device is stalled; silence or another 5xx is not.
                alive = status is not None and (status < 500 or status == 503) and not stalled
                misses = 0 if alive else misses + 1
                if misses >= self.cfg.liveness_failures:
                    m.last_error = (
                        f"stalled: {stalled}"
                        if stalled
                        else f"failed {misses} liveness probes of {m.ready_path}"
                    )
                    # Said now: stopping a hung child takes up to kill_timeout_s.
                    log.warning("restarting %s (pid %d): %s", m.name, handle.pid, m.last_error)
                    return "unresponsive"
        finally:
            exited.cancel()

    async def _back_off(self, m: Member) -> bool:
        m.failures += 1
        m.settled = True
        delay = backoff_delay(
            m.failures, self.cfg.restart_backoff_s, self.cfg.restart_backoff_max_s
        )
        looping = m.failures >= self.cfg.crash_loop_after
        m.state = CRASH_LOOP if looping else BACKOFF
        m.next_try_at = time.monotonic() + delay
        self._touch()
        clean = m.last_exit == 0 and m.last_error.startswith("exit 0")
        what = "exited" if clean else "failed"  # a clean exit 0 is no failure to report
        if looping:
            what = f"crash-looping ({m.failures} failures in a row)"
        log.warning(
            "%s %s: %s; restarting in %.1fs (log: %s)",
            m.name,
            what,
            m.last_error,
            delay,
            m.spec.log_path,
        )
        await _first(self._stop.wait(), within=delay)
        if self._stop.is_set():
            return False
        m.restarts += 1
        return True

    async def _stop_member(self, m: Member) -> None:
        handle = m.handle
        if handle is not None and handle.returncode is None:
            if m.role != "router":
                # Workers serve the router's in-flight requests until it has drained.
                await _first(self._router_stopped.wait(), self._force.wait())
            m.state = STOPPING
            self._touch()
            stopping = asyncio.ensure_future(
                handle.stop(self.cfg.drain_timeout_s, self.cfg.kill_timeout_s)
            )
            await _first(asyncio.shield(stopping), self._force.wait())
            if not stopping.done():
                await handle.kill()
            await stopping
            log.info("%s stopped (%s)", m.name, describe_exit(handle.returncode))
        if handle is not None:
            await handle.aclose()
            m.last_exit = handle.returncode
        m.state = STOPPED
        self._touch()

    # Router membership and the state file ---------------------------------------------

    def _membership(self, m: Member) -> Membership:
        # restarts and fleet_state ride along so /stats, monitor and the dashboard can show
        # what only the fleet knows (a restart at a new address is a new upstream there).
        labels = {**m.spec.labels, "restarts": str(m.restarts), "fleet_state": m.state}
        return Membership(m.url, m.router_pool, m.state == READY, labels)

    async def _sync_loop(self) -> None:
        if self._http is None:
            return
        admin = PeerClient(session=self._http)  # the supervisor's session: closed by it
        pool = PoolSync(admin, self._token, stale_drain_s=self.cfg.drain_timeout_s)
        recheck: float | None = None
        while not self._stop.is_set():
            await _first(self._changed.wait(), self._stop.wait(), within=recheck)
            self._changed.clear()
            if self._stop.is_set() or self.router.state != READY:
                continue
            try:
                done = await pool.sync(self.endpoint, [self._membership(m) for m in self.workers])
            except AdminError as exc:
                log.warning("could not update the router's pool: %s; retrying", exc)
                await _first(self._stop.wait(), within=1.0)
                self._changed.set()
                continue
            # A stale address still finishing requests: look again soon, not only on a change.
            recheck = 0.5 if done.pending else None
            if done.changed:
                log.info(
                    "router pool: %d admitted, %d drained, %d removed",
                    done.admitted,
                    done.drained,
                    done.removed,
                )

    async def _publish_loop(self) -> None:
        while True:
            await _first(self._dirty.wait(), self._done.wait())
            self._dirty.clear()
            if self._publish is not None:
                try:
                    await asyncio.to_thread(self._publish, self.snapshot())
                except OSError as exc:
                    log.warning("could not write the fleet's state: %s", exc)
            if self._done.is_set() and not self._dirty.is_set():
                return  # the final state (marked after the write above began) is on disk
            # Coalesce bursts of changes into one write.
            await _first(self._done.wait(), within=0.2)


def _with_port(spec: ChildSpec, port: int) -> ChildSpec:
    return dataclasses.replace(spec, port=port)


__all__ = ["RouterSpecFactory", "Supervisor", "describe_exit"]
