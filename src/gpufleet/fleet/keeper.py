"""One keeper task per supervised child: start it, wait until ready, watch it, restart it.

The keeper drives a :class:`~gpufleet.fleet.member.Member` through its state machine;
what differs between a worker and the router (how its spec is made, when it may be
probed, what counts as ready, what its start failing means, the order of stopping) is
its :class:`Role`, so the loop itself has no ``role == "router"`` case.

Liveness: after an exit, or ``liveness_failures`` failed probes in a row (no answer, a
5xx other than 503, or a gpufleet worker's 503 ``stalled``), the child is restarted
with capped exponential back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from gpufleet import wire
from gpufleet.config.fleet import FleetConfig
from gpufleet.fleet.launcher import ChildHandle, Launcher
from gpufleet.fleet.logfile import log_size
from gpufleet.fleet.member import Member, RestartPolicy
from gpufleet.fleet.roles import Role
from gpufleet.fleet.waits import first
from gpufleet.wire.states import MemberOutcome

log = logging.getLogger("gpufleet.fleet")

#: A liveness answer longer than this is not read for a stall reason (a foreign server).
_MAX_HEALTH_BODY = 64 * 1024

Outcome = MemberOutcome


def describe_exit(code: int | None) -> str:
    """``exit 3`` or ``killed by SIGKILL``."""
    if code is None:
        return "no exit status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


class Prober:
    """``GET`` a child's readiness path within a budget (a session the supervisor owns)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    async def probe(self, url: str, budget_s: float) -> tuple[int | None, str | None]:
        """``GET url``'s status (None: no answer) and, when a gpufleet worker answers 503
        ``stalled``, its reason."""
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=budget_s)) as r:
                stalled = None
                size = r.content_length  # a gpufleet worker always sends one
                if r.status == 503 and size is not None and size <= _MAX_HEALTH_BODY:
                    stalled = wire.stall_reason(await r.read())
                return int(r.status), stalled
        except (aiohttp.ClientError, TimeoutError):
            return None, None


@dataclass(frozen=True, slots=True)
class Fleet:
    """What every keeper of one fleet shares."""

    cfg: FleetConfig
    launcher: Launcher
    prober: Prober
    #: The first stop request: drain.
    stop: asyncio.Event
    #: The second: kill now.
    force: asyncio.Event
    #: Something a status row shows changed.
    changed: Callable[[], None]
    #: A keeper's own bug: the fleet must stop (no child may be left unsupervised).
    crashed: Callable[[], None]
    #: One line for the user.
    report: Callable[[str], None]
    #: Say why a member never started: its status and the last lines it wrote.
    tell_start_failure: Callable[[Member], Awaitable[None]]
    clock: Callable[[], float]


class Keeper:
    """Keeps one member alive until the fleet stops (``run``), then stops it."""

    def __init__(self, m: Member, role: Role, fleet: Fleet) -> None:
        self.m = m
        self._role = role
        self._fleet = fleet
        self._cfg = fleet.cfg
        self._policy = RestartPolicy.of(fleet.cfg)
        self._clock = fleet.clock
        self._changed = fleet.changed

    async def run(self) -> None:
        """Start, watch and restart the member until the fleet stops; then stop it."""
        stop = self._fleet.stop
        try:
            while not stop.is_set():
                outcome = await self._run_once()
                if outcome == Outcome.STOPPING or not await self._back_off(outcome):
                    break
        except Exception:
            # A bug here must not leave a child unsupervised: stop the fleet, loudly.
            log.exception("supervising %s failed; stopping the fleet", self.m.name)
            self._fleet.crashed()
        finally:
            await self._stop_member()
            self._role.on_stopped()

    async def _run_once(self) -> MemberOutcome:
        m, stop = self.m, self._fleet.stop
        spec = self._role.spec(m)
        m.start(self._clock())
        m.log_offset = await asyncio.to_thread(log_size, spec.log_path)
        self._changed()
        # A remote launcher may wait long for room on the cluster (Ray): a stop ends that.
        starting = asyncio.ensure_future(self._fleet.launcher.start(spec))
        await first(starting, stop.wait())
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                late = await starting  # it finished before the cancel reached it
                await late.aclose()
            return Outcome.STOPPING
        try:
            handle = starting.result()
        except OSError as exc:
            why = exc.strerror or str(exc)
            m.last_error, m.last_exit = f"cannot start {spec.argv[0]}: {why}", None
            if not m.ever_ready:
                self._fleet.report(f"gpufleet: {m.name}: {m.last_error}")
                self._role.on_start_failed(m, "could not be started")
            return Outcome.FAILED
        m.handle, m.spec = handle, handle.spec
        log.info("%s started (pid %d): %s", m.name, handle.pid, " ".join(spec.argv))
        outcome = await self._until_ready(handle)
        if outcome == Outcome.READY:
            m.ready(self._clock())
            if m.started_at is not None and m.ready_since is not None:
                took = m.ready_since - m.started_at
                log.info("%s ready at %s (pid %d, %.1fs)", m.name, m.url, handle.pid, took)
            self._changed()
            self._role.on_ready(m)
            outcome = await self._watch(handle)
        if outcome == Outcome.STOPPING:
            return outcome
        if handle.returncode is None:  # hung or never ready: no drain for it
            await handle.stop(0.0, self._cfg.kill_timeout_s)
        await handle.aclose()
        m.last_exit = handle.returncode
        if not m.ever_ready and m.failures == 0 and not stop.is_set():
            await self._fleet.tell_start_failure(m)
            self._role.on_start_failed(m, "did not start")
        return outcome

    async def _until_ready(self, handle: ChildHandle) -> MemberOutcome:
        m, stop = self.m, self._fleet.stop
        deadline = self._clock() + self._cfg.startup_timeout_s
        exited = asyncio.ensure_future(handle.wait())
        pause = 0.05
        try:
            while True:
                if stop.is_set():
                    return Outcome.STOPPING
                if exited.done():
                    m.last_error = f"{describe_exit(exited.result())} while starting"
                    return Outcome.EXITED
                if self._role.is_probeable(m):
                    status, _ = await self._fleet.prober.probe(m.url + m.ready_path, 2.0)
                    if self._role.is_ready(m, status):
                        return Outcome.READY
                if self._clock() > deadline:
                    m.last_error = f"not ready after {self._cfg.startup_timeout_s:g}s"
                    return Outcome.TIMEOUT
                await first(exited, stop.wait(), within=pause)
                pause = min(1.0, pause * 1.5)
        finally:
            exited.cancel()

    async def _watch(self, handle: ChildHandle) -> MemberOutcome:
        m, stop, cfg = self.m, self._fleet.stop, self._cfg
        exited = asyncio.ensure_future(handle.wait())
        misses = 0
        try:
            while True:
                await first(exited, stop.wait(), within=cfg.liveness_interval_s)
                if stop.is_set():
                    return Outcome.STOPPING
                if exited.done():
                    m.last_error = describe_exit(exited.result())
                    return Outcome.EXITED
                url = m.url + m.ready_path
                status, stalled = await self._fleet.prober.probe(url, cfg.liveness_timeout_s)
                # 503 is alive (loading, busy or draining) unless a gpufleet worker says its
                # device is stalled; silence or another 5xx is not.
                alive = status is not None and (status < 500 or status == 503) and not stalled
                misses = 0 if alive else misses + 1
                if misses >= cfg.liveness_failures:
                    m.last_error = (
                        f"stalled: {stalled}"
                        if stalled
                        else f"failed {misses} liveness probes of {m.ready_path}"
                    )
                    # Said now: stopping a hung child takes up to kill_timeout_s.
                    log.warning("restarting %s (pid %d): %s", m.name, handle.pid, m.last_error)
                    return Outcome.UNRESPONSIVE
        finally:
            exited.cancel()

    async def _back_off(self, outcome: MemberOutcome) -> bool:
        """Wait out the member's back-off; False when the fleet stops meanwhile."""
        m, stop = self.m, self._fleet.stop
        delay = m.ended(outcome, self._clock(), self._policy)
        self._changed()
        clean = m.last_exit == 0 and m.last_error.startswith("exit 0")
        what = "exited" if clean else "failed"  # a clean exit 0 is no failure to report
        if m.is_crash_looping:
            what = f"crash-looping ({m.failures} failures in a row)"
        log.warning(
            "%s %s: %s; restarting in %.1fs (log: %s)",
            m.name,
            what,
            m.last_error,
            delay,
            m.spec.log_path,
        )
        await first(stop.wait(), within=delay)
        return not stop.is_set()

    async def _stop_member(self) -> None:
        m, force = self.m, self._fleet.force
        handle = m.handle
        if handle is not None and handle.returncode is None:
            await first(self._role.before_stop(), force.wait())
            m.stopping(self._clock(), self._policy)
            self._changed()
            stopping = asyncio.ensure_future(
                handle.stop(self._cfg.drain_timeout_s, self._cfg.kill_timeout_s)
            )
            await first(asyncio.shield(stopping), force.wait())
            if not stopping.done():
                await handle.kill()
            await stopping
            log.info("%s stopped (%s)", m.name, describe_exit(handle.returncode))
        if handle is not None:
            await handle.aclose()
            m.last_exit = handle.returncode
        m.stopped()
        self._changed()


__all__ = ["Fleet", "Keeper", "Prober", "describe_exit"]
