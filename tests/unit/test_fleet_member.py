"""The supervised member's state machine, on virtual time, and the keeper's loop with fakes."""

from __future__ import annotations

import asyncio
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
