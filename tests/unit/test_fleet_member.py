"""The supervised member's state machine, on virtual time, and the keeper's loop with fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gpufleet.config.fleet import FleetConfig
from gpufleet.fleet.keeper import Fleet, Keeper, Prober
from gpufleet.fleet.member import InvalidTransition, Member, RestartPolicy
from gpufleet.fleet.process import ChildSpec
from gpufleet.fleet.roles import RouterLaunch, RouterRole, WorkerRole
from gpufleet.fleet.waits import Changes
from gpufleet.wire.states import MemberOutcome, MemberRole, MemberState
from tests.unit._virtual_time import on_virtual_time

S = MemberState
POLICY = RestartPolicy(backoff_s=1.0, backoff_max_s=5.0, crash_loop_after=3, reset_after_s=60.0)


def _spec(tmp_path: Path, port: int = 9000) -> ChildSpec:
    return ChildSpec(
        name="w0",
        argv=("fake",),
        env={},
        host="127.0.0.1",
        port=port,
        log_path=tmp_path / "w0.log",
    )


def _member(tmp_path: Path, role: MemberRole = MemberRole.WORKER) -> Member:
    return Member("w0", role, _spec(tmp_path), "/health")


def test_a_run_that_ends_backs_off_doubling_then_crash_loops(tmp_path: Path) -> None:
    m = _member(tmp_path)
    m.start(now=0.0)
    assert (m.state, m.started_at, m.restarts) == (S.STARTING, 0.0, 0)
    assert m.ended(MemberOutcome.EXITED, now=1.0, policy=POLICY) == 1.0
    assert (m.state, m.failures, m.next_try_at, m.settled) == (S.BACKOFF, 1, 2.0, True)
    assert m.row(now=1.5)["next_try_in_s"] == 0.5
    m.start(now=2.0)
    assert (m.restarts, m.next_try_at) == (1, None)
    assert m.ended(MemberOutcome.TIMEOUT, now=3.0, policy=POLICY) == 2.0
    m.start(now=5.0)
    assert m.ended(MemberOutcome.FAILED, now=6.0, policy=POLICY) == 4.0
    assert (m.state, m.failures, m.is_crash_looping) == (S.CRASH_LOOP, 3, True)
    m.start(now=10.0)
    assert m.ended(MemberOutcome.EXITED, now=11.0, policy=POLICY) == 5.0  # capped
    assert m.outcome == MemberOutcome.EXITED
    assert not m.ever_ready


def test_failures_are_forgotten_after_staying_ready(tmp_path: Path) -> None:
    m = _member(tmp_path)
    m.start(now=0.0)
    m.ended(MemberOutcome.EXITED, now=1.0, policy=POLICY)
    m.start(now=2.0)
    m.ready(now=3.0)
    assert (m.state, m.ready_since, m.ever_ready, m.outcome) == (
        S.READY,
        3.0,
        True,
        MemberOutcome.READY,
    )
    # Ready 59 s: the earlier failure still counts.
    assert m.ended(MemberOutcome.UNRESPONSIVE, now=62.0, policy=POLICY) == 2.0
    assert m.ready_since is None
    m.start(now=64.0)
    m.ready(now=65.0)
    # Ready 60 s: forgotten; this failure is the first again.
    assert m.ended(MemberOutcome.EXITED, now=125.0, policy=POLICY) == 1.0
    assert (m.failures, m.state) == (1, S.BACKOFF)


def test_stopping_from_every_live_state(tmp_path: Path) -> None:
    for prepare in ("pending", "starting", "ready", "backoff"):
        m = _member(tmp_path)
        if prepare != "pending":
            m.start(now=0.0)
        if prepare == "ready":
            m.ready(now=1.0)
        if prepare == "backoff":
            m.ended(MemberOutcome.EXITED, now=1.0, policy=POLICY)
        m.stopping(now=2.0, policy=POLICY)
        assert (m.state, m.outcome, m.next_try_at) == (S.STOPPING, MemberOutcome.STOPPING, None)
        m.stopped()
        m.stopped()  # twice is fine: the keeper's finally runs after any path
        assert m.state == S.STOPPED
    m = _member(tmp_path)
    m.stopped()  # never started
    assert m.state == S.STOPPED


def test_edges_the_machine_does_not_have_raise(tmp_path: Path) -> None:
    m = _member(tmp_path)
    with pytest.raises(InvalidTransition, match="pending -> ready"):
        m.ready(now=0.0)
    with pytest.raises(InvalidTransition):
        m.ended(MemberOutcome.EXITED, now=0.0, policy=POLICY)  # it never started
    m.start(now=0.0)
    with pytest.raises(InvalidTransition):
        m.start(now=0.0)
    with pytest.raises(InvalidTransition, match="does not end as"):
        m.ended(MemberOutcome.STOPPING, now=1.0, policy=POLICY)
    m.stopped()
    with pytest.raises(InvalidTransition, match="stopped -> starting"):
        m.start(now=2.0)


def test_the_status_row_speaks_plain_strings(tmp_path: Path) -> None:
    row = _member(tmp_path, MemberRole.ROUTER).row(now=0.0)
    assert (row["role"], row["state"]) == ("router", "pending")
    assert type(row["role"]) is str
    assert type(row["state"]) is str


# The router's role ---------------------------------------------------------------------


class _Fleet:
    def __init__(self, workers: list[Member]) -> None:
        self.workers = workers
        self.router_port = 0
        self.failed: list[str] = []
        self.ready = 0

    def router_ready(self) -> None:
        self.ready += 1

    def fail_start(self, why: str) -> None:
        self.failed.append(why)


def test_the_router_is_probed_only_once_its_port_file_names_its_port(tmp_path: Path) -> None:
    worker = _member(tmp_path)
    worker.start(now=0.0)
    worker.ready(now=1.0)
    port_file = tmp_path / "router.port"
    port_file.write_text("stale\n")
    seen: list[list[str]] = []

    def make(ready: object, port: int) -> ChildSpec:
        assert isinstance(ready, list)
        seen.append([w.name for w in ready])
        return _spec(tmp_path, port)

    fleet = _Fleet([worker])
    role = RouterRole(fleet, RouterLaunch(spec=make, token="t", port_file=port_file))
    router = _member(tmp_path, MemberRole.ROUTER)
    assert role.spec(router).port == 0
    assert seen == [["w0"]]
    assert not port_file.exists()  # the last run's port is not trusted
    assert not role.is_probeable(router)
    port_file.write_text("8123\n")
    assert role.is_probeable(router)
    assert router.url == "http://127.0.0.1:8123"
    assert role.is_ready(router, 503)
    assert not role.is_ready(router, None)
    role.on_start_failed(router, "did not start")
    assert fleet.failed == ["the router did not start"]


@on_virtual_time  # the bound below fails at once on a deadlock, in no wall time
async def test_workers_stop_after_the_router() -> None:
    stopped = asyncio.Event()
    role = WorkerRole(stopped)
    waiting = asyncio.ensure_future(role.before_stop())
    await asyncio.sleep(0)
    assert not waiting.done()
    stopped.set()
    async with asyncio.timeout(1):
        await waiting


# The keeper's loop, with a fake launcher and a fake clock ------------------------------


class _Exits:
    """A child that exits with ``code`` at once."""

    def __init__(self, spec: ChildSpec, code: int) -> None:
        self.spec = spec
        self.pid = 4242
        self.url = spec.url
        self.returncode: int | None = code

    async def wait(self) -> int:
        assert self.returncode is not None
        return self.returncode

    def send(self, sig: int) -> None:
        pass

    async def stop(self, grace_s: float, kill_after_s: float = 0.0) -> int:
        return await self.wait()

    async def kill(self) -> int:
        return await self.wait()

    async def aclose(self) -> None:
        pass


class _NoAnswer(Prober):
    """Nothing answers (no socket is opened)."""

    def __init__(self) -> None:
        pass

    async def probe(self, url: str, budget_s: float) -> tuple[int | None, str | None]:
        return None, None


class _Launcher:
    name = "fake"

    def __init__(self) -> None:
        self.starts = 0

    async def start(self, spec: ChildSpec) -> _Exits:
        self.starts += 1
        return _Exits(spec, 3)


@on_virtual_time
async def test_a_child_that_keeps_exiting_backs_off_1_2_4_s_then_crash_loops() -> None:
    # Real back-off waits (1, 2, 4 s) on the loop's virtual clock: no wall time passes.
    cfg = FleetConfig(restart_backoff_s=1.0, restart_backoff_max_s=30.0, crash_loop_after=3)
    loop = asyncio.get_running_loop()
    launcher = _Launcher()
    stop, force = asyncio.Event(), asyncio.Event()
    told: list[str] = []
    m = _member(Path("/nonexistent"))
    tries: list[tuple[float, float | None]] = []

    def changed() -> None:
        if m.state in (S.BACKOFF, S.CRASH_LOOP):
            tries.append((loop.time(), m.next_try_at))
        if m.failures >= 4:
            stop.set()

    async def tell(member: Member) -> None:
        told.append(member.last_error)

    fleet = Fleet(
        cfg=cfg,
        launcher=launcher,
        prober=_NoAnswer(),
        stop=stop,
        force=force,
        changed=changed,
        crashed=stop.set,
        report=told.append,
        tell_start_failure=tell,
        clock=loop.time,
    )
    started = loop.time()
    await Keeper(m, WorkerRole(asyncio.Event()), fleet).run()
    assert m.state == S.STOPPED
    assert (m.failures, m.restarts, launcher.starts) == (4, 3, 4)
    assert m.last_exit == 3
    assert m.last_error == "exit 3 while starting"
    assert m.outcome == MemberOutcome.EXITED
    assert told == ["exit 3 while starting"]  # said once, for its first failure
    delays = [due - at for at, due in tries if due is not None]
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0], abs=0.01)
    # Each back-off was waited out (the fourth is cut short by the stop).
    assert 7.0 <= loop.time() - started < 7.5


class _Hangs:
    """A child that runs until it is stopped or killed."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.pid = 4343
        self.url = spec.url
        self.returncode: int | None = None
        self.stops: list[tuple[float, float]] = []
        self._exited = asyncio.Event()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send(self, sig: int) -> None:
        pass

    async def stop(self, grace_s: float, kill_after_s: float = 0.0) -> int:
        self.stops.append((grace_s, kill_after_s))
        return await self.kill()

    async def kill(self) -> int:
        self.returncode = -9
        self._exited.set()
        return self.returncode

    async def aclose(self) -> None:
        pass


class _HangingLauncher:
    name = "fake"

    def __init__(self) -> None:
        self.started: list[_Hangs] = []

    async def start(self, spec: ChildSpec) -> _Hangs:
        self.started.append(_Hangs(spec))
        return self.started[-1]


class _Scripted(Prober):
    """Answers each probe from ``answer(loop time)``, and notes when it was asked."""

    def __init__(self, answer: Callable[[float], int | None]) -> None:
        self._answer = answer
        self.asked: list[float] = []

    async def probe(self, url: str, budget_s: float) -> tuple[int | None, str | None]:
        now = asyncio.get_running_loop().time()
        self.asked.append(now)
        return self._answer(now), None


async def _keep_until_backoff(
    cfg: FleetConfig, prober: Prober, launcher: _HangingLauncher
) -> tuple[Member, float, list[str]]:
    """Run one keeper until its member first backs off; the member and when that was."""
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()
    m = _member(Path("/nonexistent"))
    backed_off: list[float] = []
    told: list[str] = []

    def changed() -> None:
        if m.state == S.BACKOFF and not backed_off:
            backed_off.append(loop.time())
            stop.set()  # from here on the fleet stops: no timer of the test's own runs

    async def tell(member: Member) -> None:
        told.append(member.last_error)

    fleet = Fleet(
        cfg=cfg,
        launcher=launcher,
        prober=prober,
        stop=stop,
        force=force,
        changed=changed,
        crashed=stop.set,
        report=told.append,
        tell_start_failure=tell,
        clock=loop.time,
    )
    router_stopped = asyncio.Event()
    router_stopped.set()
    await Keeper(m, WorkerRole(router_stopped), fleet).run()
    assert len(backed_off) == 1
    return m, backed_off[0], told


@on_virtual_time
async def test_a_child_never_ready_is_stopped_after_the_startup_timeout() -> None:
    cfg = FleetConfig(startup_timeout_s=10.0, kill_timeout_s=3.0)
    launcher, prober = _HangingLauncher(), _Scripted(lambda now: None)
    m, at, told = await _keep_until_backoff(cfg, prober, launcher)
    # Given up at the first look past its 10 s (looks are at most 1 s apart).
    assert 10.0 < at <= 11.0
    assert prober.asked[0] == 0.0
    gaps = [b - a for a, b in zip(prober.asked, prober.asked[1:], strict=False)]
    assert len(gaps) >= 10  # looked again and again, not once at the end
    assert max(gaps) <= 1.0 + 1e-9
    assert m.outcome == MemberOutcome.TIMEOUT
    assert m.last_error == "not ready after 10s"
    assert told == ["not ready after 10s"]
    (child,) = launcher.started
    assert child.stops == [(0.0, 3.0)]  # hung: no drain, killed after kill_timeout_s
    assert m.state == S.STOPPED


@on_virtual_time
async def test_a_ready_child_that_stops_answering_is_restarted_after_its_misses() -> None:
    cfg = FleetConfig(liveness_interval_s=5.0, liveness_failures=3)
    # Ready at 0; then 5: silent, 10: 503 (alive: busy or loading), 15: silent, 20: a 500,
    # 25: silent, the third miss in a row.
    answers = {0.0: 200, 5.0: None, 10.0: 503, 15.0: None, 20.0: 500, 25.0: None}
    prober = _Scripted(lambda now: answers[round(now, 6)])
    launcher = _HangingLauncher()
    m, at, told = await _keep_until_backoff(cfg, prober, launcher)
    assert prober.asked == pytest.approx([0.0, 5.0, 10.0, 15.0, 20.0, 25.0])
    assert at == pytest.approx(25.0)
    assert m.outcome == MemberOutcome.UNRESPONSIVE
    assert m.last_error == "failed 3 liveness probes of /health"
    assert m.ever_ready
    assert told == []  # it did start: no start failure to tell
    (child,) = launcher.started
    assert child.stops == [(0.0, cfg.kill_timeout_s)]


@on_virtual_time
async def test_changes_wake_every_reader_once_per_look() -> None:
    changes = Changes()
    assert await changes.wait(-1) == 0  # a reader that has seen nothing goes at once
    first_reader = asyncio.ensure_future(changes.wait(0))
    second_reader = asyncio.ensure_future(changes.wait(0))
    await asyncio.sleep(0)
    assert not first_reader.done()
    changes.touch()
    changes.touch()  # two changes before anyone looked: one wake-up, the latest count
    async with asyncio.timeout(1):
        assert await first_reader == 2
        assert await second_reader == 2
    assert await changes.wait(1) == 2  # a reader behind goes at once
