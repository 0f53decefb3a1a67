"""The whole supervisor on virtual time: fake children, scripted probes, a recorded pool.

What `up` does over a fleet's life — start the workers, start the router with the ready
ones, keep the router's pool in step when a worker dies and comes back after its back-off,
stop the router before the workers — checked at the instants it happens on the loop's
virtual clock (tests/unit/_virtual_time.py), so a 30 s life takes no wall time and the
times asserted are exact whatever the machine's load. The integration tests run the same
with real processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from gpufleet.config.fleet import FleetConfig
from gpufleet.fleet.admin import Membership, SyncResult
from gpufleet.fleet.keeper import Prober
from gpufleet.fleet.member import Member
from gpufleet.fleet.process import ChildSpec
from gpufleet.fleet.supervisor import Output, RouterLaunch, Supervisor
from gpufleet.wire.states import FleetPhase, MemberRole, MemberState
from tests.unit._virtual_time import on_virtual_time

READY_AFTER_S = 2.0  # a child answers its readiness probe this long after it starts
ROUTER_PORT = 8000


def _spec(tmp_path: Path, name: str, port: int) -> ChildSpec:
    return ChildSpec(
        name=name, argv=("fake",), env={}, host="127.0.0.1", port=port, log_path=tmp_path / name
    )


class _Child:
    """A child that runs until told to exit (``exit``) or stopped; no process, no socket."""

    def __init__(self, spec: ChildSpec, events: list[tuple[float, str]]) -> None:
        self.spec = spec
        self.pid = 1000 + spec.port
        self.url = spec.url
        self.returncode: int | None = None
        self.started = asyncio.get_running_loop().time()
        self._events = events
        self._exited = asyncio.Event()

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._events.append((asyncio.get_running_loop().time(), f"{self.spec.name} exit"))
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send(self, sig: int) -> None:
        pass

    async def stop(self, grace_s: float, kill_after_s: float = 0.0) -> int:
        self._events.append((asyncio.get_running_loop().time(), f"{self.spec.name} stop"))
        await asyncio.sleep(0.5)  # a drain takes time
        self.exit(0)
        return 0

    async def kill(self) -> int:
        self.exit(-9)
        return -9

    async def aclose(self) -> None:
        pass


class _Launcher:
    """Starts ``_Child``ren; the router's writes its port file, as the real one does."""

    name = "fake"

    def __init__(self, port_file: Path) -> None:
        self.port_file = port_file
        self.events: list[tuple[float, str]] = []
        self.children: dict[str, _Child] = {}

    async def start(self, spec: ChildSpec) -> _Child:
        child = _Child(spec, self.events)
        self.children[spec.name] = child
        self.events.append((child.started, f"{spec.name} start"))
        if spec.name == "router":
            self.port_file.write_text(f"{ROUTER_PORT}\n")
        return child


class _Probes(Prober):
    """A child answers 200 once it has run ``READY_AFTER_S``; nothing when it has exited."""

    def __init__(self, launcher: _Launcher) -> None:
        self._launcher = launcher

    async def probe(self, url: str, budget_s: float) -> tuple[int | None, str | None]:
        now = asyncio.get_running_loop().time()
        for child in self._launcher.children.values():
            if url.startswith(child.spec.url) and child.returncode is None:
                return (200 if now - child.started >= READY_AFTER_S else 503), None
        return None, None


def test_a_fleet_lives_on_virtual_time_start_restart_and_stop_in_order(tmp_path: Path) -> None:
    on_virtual_time(lambda: _a_fleet_lives(tmp_path))()


async def _a_fleet_lives(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    cfg = FleetConfig(restart_backoff_s=1.0, restart_backoff_max_s=30.0)
    port_file = tmp_path / "router.port"
    launcher = _Launcher(port_file)
    workers = [
        Member(f"w{i}", MemberRole.WORKER, _spec(tmp_path, f"w{i}", 9001 + i), "/health")
        for i in range(2)
    ]
    router = Member("router", MemberRole.ROUTER, _spec(tmp_path, "router", 0), "/health")
    router_started_with: list[list[str]] = []

    def router_spec(ready: Sequence[Member], port: int) -> ChildSpec:
        router_started_with.append([w.name for w in ready])
        return _spec(tmp_path, "router", port)

    pools: list[tuple[float, dict[str, bool]]] = []

    async def pool_sync(base: str, members: list[Membership]) -> SyncResult:
        assert base == f"http://127.0.0.1:{ROUTER_PORT}"
        pools.append((loop.time(), {m.url: m.is_ready for m in members}))
        return SyncResult()

    told: list[str] = []
    sup = Supervisor(
        cfg,
        workers,
        router,
        launcher=launcher,
        router_launch=RouterLaunch(spec=router_spec, token="t", port_file=port_file),
        output=Output(report=told.append),
        clock=loop.time,
        prober=_Probes(launcher),
        pool_sync=pool_sync,
    )
    running = asyncio.ensure_future(sup.run(handle_signals=False))

    async def until(cond: Callable[[], bool]) -> float:
        # Polls what several parts change, every 10 virtual ms; 120 virtual seconds bound a
        # deadlock, which fails at once in wall time.
        async with asyncio.timeout(120):
            while not cond():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return loop.time()

    # 1. Both workers start at once; the router only once both answer, with both.
    running_at = await until(lambda: sup.phase == FleetPhase.RUNNING)
    starts = {name: t for t, name in launcher.events if name.endswith("start")}
    assert starts["w0 start"] == starts["w1 start"] == 0.0
    assert READY_AFTER_S <= starts["router start"] < READY_AFTER_S + 1.0  # probed with back-off
    assert router_started_with == [["w0", "w1"]]
    # The router is ready as soon as it answers at all (its /health may say "no worker").
    assert running_at == pytest.approx(starts["router start"], abs=0.011)
    assert any(line.startswith("gpufleet: ready at") and "(2/2 workers)" in line for line in told)
    w0, w1 = (w.url for w in workers)
    await until(lambda: bool(pools) and pools[-1][1] == {w0: True, w1: True})

    # 2. w1 dies: the router's pool is told at once, and w1 is started again after exactly
    #    its back-off, then re-admitted once it answers.
    crash_at = loop.time()
    launcher.children["w1"].exit(3)
    await until(lambda: pools[-1][1] == {w0: True, w1: False})
    assert pools[-1][0] == crash_at
    await until(lambda: launcher.children["w1"].returncode is None)
    # The member's start (before the keeper reads its log's size in a thread, during
    # which the virtual clock may run on to the next timer).
    restart = workers[1].started_at
    assert restart is not None
    assert restart == pytest.approx(crash_at + cfg.restart_backoff_s)
    assert workers[1].restarts == 1
    assert workers[1].failures == 1
    back = await until(lambda: pools[-1][1] == {w0: True, w1: True})
    assert restart + READY_AFTER_S <= back < restart + READY_AFTER_S + 1.0
    assert workers[1].state == MemberState.READY

    # 3. Stop: the router drains first; the workers only once it has exited.
    stop_at = loop.time()
    sup.request_stop()
    assert await running == 0
    events = [(t, name) for t, name in launcher.events if t >= stop_at]
    assert [name for _, name in events[:2]] == ["router stop", "router exit"]
    router_exit = events[1][0]
    assert router_exit == pytest.approx(stop_at + 0.5)
    worker_stops = [t for t, name in events if name in {"w0 stop", "w1 stop"}]
    assert worker_stops == [router_exit, router_exit]
    assert sup.phase == FleetPhase.STOPPED
    assert not sup.forced
    assert not sup.crashed
    assert all(m.handle is None or m.handle.returncode == 0 for m in [router, *workers])
