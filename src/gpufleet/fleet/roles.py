"""What is particular to each kind of supervised member: a worker, the router.

The keeper (``keeper.py``) runs the same loop for both; a :class:`Role` answers the few
questions where they differ, so no code asks ``role == "router"``:

- the spec: a worker's is fixed; the router's is made at each start from the workers
  ready then (``--worker``), on the port it had (its port file is removed first);
- when it may be probed: the router only once it wrote its port file (a fixed port
  probed earlier could reach another server holding it);
- what is ready: a worker answers 200 on its ready path; the router answering at all
  is ready (its ``/health`` may say "no worker");
- what failing to start means: for the router, the fleet cannot start;
- the order of stopping: workers stop after the router, whose in-flight requests they
  are still serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpufleet.fleet.member import Member
from gpufleet.fleet.process import ChildSpec
from gpufleet.wire.states import MemberState

log = logging.getLogger("gpufleet.fleet")

#: Builds the router's spec from the members ready now and the port to listen on.
RouterSpecFactory = Callable[[Sequence[Member], int], ChildSpec]


@dataclass(frozen=True, slots=True)
class RouterLaunch:
    """How the fleet's router is started, reached and announced."""

    #: Its spec from the workers ready now and the port to listen on.
    spec: RouterSpecFactory
    #: The admin API's token (the router has it in its environment).
    token: str
    #: Where the router writes its port (it is probed only once it has).
    port_file: Path
    #: Where ``up --port-file`` wants the endpoint's port, once the fleet is ready.
    endpoint_port_file: Path | None = None


class Role(Protocol):
    """What is particular to one kind of member (a worker, the router)."""

    def spec(self, m: Member) -> ChildSpec:
        """The spec to start ``m`` with now."""
        ...

    def is_probeable(self, m: Member) -> bool:
        """True once ``m``'s address is known to be its own (the router: its port file)."""
        ...

    def is_ready(self, m: Member, status: int | None) -> bool:
        """True when ``status`` from ``m``'s readiness path means ready."""
        ...

    def on_ready(self, m: Member) -> None:
        """``m`` became ready."""
        ...

    def on_start_failed(self, m: Member, why: str) -> None:
        """``m`` failed before it was ever ready (``why``: for the user)."""
        ...

    async def before_stop(self) -> None:
        """Wait for what must stop before this member does."""
        ...

    def on_stopped(self) -> None:
        """This member's keeper is done."""
        ...


class RouterFleet(Protocol):
    """What the router's role needs of the supervisor."""

    @property
    def workers(self) -> Sequence[Member]: ...

    @property
    def router_port(self) -> int: ...

    def router_ready(self) -> None:
        """The router answers: the fleet is running."""
        ...

    def fail_start(self, why: str) -> None:
        """The fleet cannot start."""
        ...


class WorkerRole:
    """A worker: ready on 200; stops after the router (it serves the router's in-flight work)."""

    def __init__(self, router_stopped: asyncio.Event) -> None:
        self._router_stopped = router_stopped
        #: The start (``started_at``) of each member already told about a 404.
        self._told_404: dict[str, float | None] = {}

    def spec(self, m: Member) -> ChildSpec:
        return m.spec

    def is_probeable(self, m: Member) -> bool:
        return True

    def is_ready(self, m: Member, status: int | None) -> bool:
        if status == 404 and self._told_404.get(m.name, -1.0) != m.started_at:
            self._told_404[m.name] = m.started_at
            log.warning(
                "%s: GET %s → 404: set --ready-path to a path that answers 200"
                " once the server is ready",
                m.name,
                m.ready_path,
            )
        return status == 200

    def on_ready(self, m: Member) -> None:
        pass

    def on_start_failed(self, m: Member, why: str) -> None:
        pass  # the pool's check (``Supervisor._check_pools``) decides what it means

    async def before_stop(self) -> None:
        await self._router_stopped.wait()

    def on_stopped(self) -> None:
        pass


class RouterRole:
    """The router: started with the ready workers; probed once it wrote its port file."""

    def __init__(self, fleet: RouterFleet, launch: RouterLaunch) -> None:
        self._sup = fleet
        self._launch = launch
        #: Set once the router's keeper is done: the workers may stop.
        self.stopped = asyncio.Event()

    def spec(self, m: Member) -> ChildSpec:
        ready = [w for w in self._sup.workers if w.state == MemberState.READY]
        self._launch.port_file.unlink(missing_ok=True)
        m.spec = self._launch.spec(ready, self._sup.router_port)
        return m.spec

    def is_probeable(self, m: Member) -> bool:
        # Probing a fixed port before its port file says so could reach another server.
        with contextlib.suppress(FileNotFoundError, ValueError):
            text = self._launch.port_file.read_text().strip()
            if text and (m.spec.port in (0, int(text))):
                m.spec = dataclasses.replace(m.spec, port=int(text))
                return True
        return False

    def is_ready(self, m: Member, status: int | None) -> bool:
        # The router answering at all is ready: its /health may say "no worker".
        return status is not None

    def on_ready(self, m: Member) -> None:
        self._sup.router_ready()

    def on_start_failed(self, m: Member, why: str) -> None:
        self._sup.fail_start(f"the router {why}")

    async def before_stop(self) -> None:
        pass

    def on_stopped(self) -> None:
        self.stopped.set()


__all__ = ["Role", "RouterFleet", "RouterLaunch", "RouterRole", "RouterSpecFactory", "WorkerRole"]
