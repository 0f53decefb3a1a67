"""Keep every worker and the router alive; stop them all cleanly.

Each member has a :class:`~gpufleet.fleet.keeper.Keeper` (start, ready, watch, restart
with back-off; a child that keeps failing is shown as crash-looping) and a role that says
what is particular to it (:class:`WorkerRole`, :class:`RouterRole`). The router starts
once every worker is ready or has failed once, with the ready ones as ``--worker``;
afterwards its pool follows the workers through the admin API. Signal handlers only set
a flag: the first stop request drains (the router first, so in-flight requests finish
on workers that are still up, then the workers), a second one kills everything at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from gpufleet.config.fleet import FleetConfig
from gpufleet.errors import AdminError
from gpufleet.fleet.admin import Membership, PoolSync, SyncResult
from gpufleet.fleet.keeper import Fleet, Keeper, Prober, describe_exit
from gpufleet.fleet.launcher import Launcher
from gpufleet.fleet.logfile import last_lines
from gpufleet.fleet.member import Member
from gpufleet.fleet.roles import RouterLaunch, RouterRole, RouterSpecFactory, WorkerRole
from gpufleet.fleet.rundir import write_atomic
from gpufleet.fleet.waits import Changes, first
from gpufleet.wire.http import PeerClient
from gpufleet.wire.states import FleetPhase, MemberState

log = logging.getLogger("gpufleet.fleet")

#: Brings the router at the URL in step with the members (``PoolSync.sync``'s shape).
PoolSyncFn = Callable[[str, list[Membership]], Awaitable[SyncResult]]


@dataclass(frozen=True, slots=True)
class Output:
    """What the supervisor tells: state for the run directory, lines for the user."""

    #: Called (off the loop) with ``Supervisor.snapshot()`` after changes.
    publish: Callable[[dict[str, Any]], None] | None = None
    report: Callable[[str], None] = print
    #: A command to try once ready; ``{endpoint}`` is replaced.
    ready_hint: str = ""


class Supervisor:
    """Runs a fleet until asked to stop; ``request_stop`` is safe to call from a signal handler."""

    def __init__(
        self,
        cfg: FleetConfig,
        workers: Sequence[Member],
        router: Member,
        *,
        launcher: Launcher,
        router_launch: RouterLaunch,
        output: Output | None = None,
        clock: Callable[[], float] = time.monotonic,
        prober: Prober | None = None,
        pool_sync: PoolSyncFn | None = None,
    ) -> None:
        """``clock``, ``prober`` and ``pool_sync`` are seams for tests (a virtual loop's
        time, scripted probe answers, a recorded router pool); by default the monotonic
        clock, probes and admin calls over HTTP on the supervisor's own session."""
        self.cfg = cfg
        self.workers = list(workers)
        self.router = router
        self._launcher = launcher
        self._launch = router_launch
        self._out = output or Output()
        self._clock = clock
        self._prober = prober
        self._pool_sync = pool_sync
        self.router_port = cfg.port
        self.phase = FleetPhase.STARTING
        self.forced = False
        self.crashed = False
        #: Why the start failed (a pool with no ready worker, the router never ready).
        self.failed_start: str | None = None
        self._told: set[tuple[str, ...]] = set()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._done = asyncio.Event()
        # Followed by the state file, the router's pool and the start-up gate.
        self._changes = Changes()
        self._router_role = RouterRole(self, router_launch)
        self._worker_role = WorkerRole(self._router_role.stopped)

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
        self._changes.touch()

    def _crashed(self) -> None:
        self.crashed = True
        self._stop.set()

    def snapshot(self) -> dict[str, Any]:
        """The fleet as plain data (the run directory's state file)."""
        now = self._clock()
        return {
            "phase": str(self.phase),
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
                await self._run(http)
        finally:
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            for m in [self.router, *self.workers]:
                if m.handle is not None:
                    await m.handle.aclose()
        return 1 if self.forced or self.crashed or self.failed_start else 0

    async def _run(self, http: aiohttp.ClientSession) -> None:
        fleet = Fleet(
            cfg=self.cfg,
            launcher=self._launcher,
            prober=self._prober or Prober(http),
            stop=self._stop,
            force=self._force,
            changed=self._touch,
            crashed=self._crashed,
            report=self._out.report,
            tell_start_failure=self._tell_start_failure,
            clock=self._clock,
        )
        report = self._out.report
        async with asyncio.TaskGroup() as tg:
            keepers = [
                tg.create_task(Keeper(m, self._worker_role, fleet).run()) for m in self.workers
            ]
            tg.create_task(self._publish_loop())
            await self._wait_settled()
            if self._stop.is_set():
                self._router_role.stopped.set()
            else:
                keepers.append(tg.create_task(Keeper(self.router, self._router_role, fleet).run()))
                tg.create_task(self._sync_loop(http))
            await self._stop.wait()
            self.phase = FleetPhase.STOPPING
            if self.failed_start:
                report(f"gpufleet: not started: {self.failed_start}")
            else:
                report("gpufleet: stopping (the router first, then the workers); again to force")
            self._touch()
            await first(asyncio.shield(asyncio.gather(*keepers)), self._force.wait())
            if self._force.is_set():
                self.forced = True
                report("gpufleet: forced stop: killing every process")
                await asyncio.gather(*keepers)
            self.phase = FleetPhase.STOPPED
            self._touch()
            self._done.set()
        alive = [m.name for m in [self.router, *self.workers] if m.pid is not None]
        report(f"gpufleet: stopped; processes still alive: {', '.join(alive) or 'none'}")

    async def _wait_settled(self) -> None:
        while not self._stop.is_set() and not all(m.settled for m in self.workers):
            seen = self._changes.count
            self._check_pools()
            if self._stop.is_set():
                return
            await first(self._changes.wait(seen), self._stop.wait())
        self._check_pools()

    def _check_pools(self) -> None:
        """Stop the start when every worker of a pool has failed and none was ever ready."""
        pools: dict[str, list[Member]] = {}
        for w in self.workers:
            pools.setdefault(w.pool, []).append(w)
        for pool, members in pools.items():
            if all(w.settled and not w.ever_ready for w in members):
                self.fail_start(f"no worker of pool {pool} became ready")
                return

    def fail_start(self, why: str) -> None:
        """The fleet cannot start (``why``): stop it, unless it is already stopping."""
        if self.failed_start is None and not self._stop.is_set():
            self.failed_start = why
            self._stop.set()

    async def _tell_start_failure(self, m: Member) -> None:
        """Say why ``m`` did not start: its status and the last lines it wrote."""
        report = self._out.report
        lines = await asyncio.to_thread(last_lines, m.spec.log_path, m.log_offset)
        # The same lines from every worker of a pool are said once (timestamps, pids apart).
        key = (m.pool, *(re.sub(r"\d+", "#", line) for line in lines))
        if key in self._told:
            report(f"gpufleet: {m.name}: {m.last_error} (the same lines)")
            return
        self._told.add(key)
        where = f"its last lines ({m.spec.log_path}):" if lines else f"nothing in {m.spec.log_path}"
        report(f"gpufleet: {m.name}: {m.last_error}; {where}")
        for line in lines:
            report(f"  | {line}")

    def router_ready(self) -> None:
        """The router answers: the fleet is running (said once), at the router's port."""
        self.router_port = self.router.spec.port
        if self.phase != FleetPhase.STARTING:
            return
        self.phase = FleetPhase.RUNNING
        if self._launch.endpoint_port_file is not None:
            write_atomic(self._launch.endpoint_port_file, f"{self.router_port}\n")
        ready = sum(1 for w in self.workers if w.state == MemberState.READY)
        report = self._out.report
        report(f"gpufleet: ready at {self.endpoint} ({ready}/{len(self.workers)} workers)")
        if self._out.ready_hint:
            report(f"  try: {self._out.ready_hint.replace('{endpoint}', self.endpoint)}")

    # Router membership and the state file ---------------------------------------------

    def _membership(self, m: Member) -> Membership:
        # restarts and fleet_state ride along so /stats, monitor and the dashboard can show
        # what only the fleet knows (a restart at a new address is a new upstream there).
        labels = {**m.spec.labels, "restarts": str(m.restarts), "fleet_state": str(m.state)}
        return Membership(m.url, m.router_pool, m.state == MemberState.READY, labels)

    async def _sync_loop(self, http: aiohttp.ClientSession) -> None:
        sync = self._pool_sync
        if sync is None:
            admin = PeerClient(session=http)  # the supervisor's session: closed by it
            sync = PoolSync(admin, self._launch.token, stale_drain_s=self.cfg.drain_timeout_s).sync
        recheck: float | None = None
        seen = -1  # the first round at once
        while not self._stop.is_set():
            await first(self._changes.wait(seen), self._stop.wait(), within=recheck)
            seen = self._changes.count
            if self._stop.is_set() or self.router.state != MemberState.READY:
                continue
            try:
                done = await sync(self.endpoint, [self._membership(m) for m in self.workers])
            except AdminError as exc:
                log.warning("could not update the router's pool: %s; retrying", exc)
                await first(self._stop.wait(), within=1.0)
                seen = -1  # again at once
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
        publish = self._out.publish
        seen = 0
        while True:
            await first(self._changes.wait(seen), self._done.wait())
            seen = self._changes.count
            if publish is not None:
                try:
                    await asyncio.to_thread(publish, self.snapshot())
                except OSError as exc:
                    log.warning("could not write the fleet's state: %s", exc)
            if self._done.is_set() and self._changes.count == seen:
                return  # the final state (marked after the write above began) is on disk
            # Coalesce bursts of changes into one write.
            await first(self._done.wait(), within=0.2)


__all__ = [
    "Output",
    "PoolSyncFn",
    "RouterLaunch",
    "RouterSpecFactory",
    "Supervisor",
    "describe_exit",
]
