"""One supervised child as a small state machine: its state, restarts, back-off, status row.

::

    PENDING ──start──▶ STARTING ──ready──▶ READY
       ▲                  │  ▲               │
       │               ended │ start       ended
       │                  ▼  │               ▼
       │            BACKOFF / CRASH_LOOP ◀───┘
       │
    any state ──stop──▶ STOPPING ──stopped──▶ STOPPED   (also straight to STOPPED)

``ended`` is every way a run of the child ends short of a stop (it exited, it never got
ready, it stopped answering, it could not be started): it counts a failure, picks the
back-off delay from :class:`RestartPolicy` and says when the next start is due. Time is a
parameter (``now``), so the transitions are tested without waiting. A transition the
table does not allow is a supervisor bug and raises ``InvalidTransition``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from gpufleet.config.fleet import FleetConfig
from gpufleet.fleet.launcher import ChildHandle
from gpufleet.fleet.process import ChildSpec
from gpufleet.wire.states import MemberOutcome, MemberRole, MemberState

_S = MemberState
#: The transitions the supervisor may make; anything else is its bug.
TRANSITIONS: Final[dict[MemberState, frozenset[MemberState]]] = {
    _S.PENDING: frozenset({_S.STARTING, _S.STOPPING, _S.STOPPED}),
    _S.STARTING: frozenset({_S.READY, _S.BACKOFF, _S.CRASH_LOOP, _S.STOPPING, _S.STOPPED}),
    _S.READY: frozenset({_S.BACKOFF, _S.CRASH_LOOP, _S.STOPPING, _S.STOPPED}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPING, _S.STOPPED}),
    _S.CRASH_LOOP: frozenset({_S.STARTING, _S.STOPPING, _S.STOPPED}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.STOPPED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """The supervisor moved a member along an edge the state machine does not have."""


def backoff_delay(failures: int, base_s: float, max_s: float) -> float:
    """Capped exponential back-off: ``base``, ``2·base``, ``4·base`` … up to ``max_s``."""
    if failures <= 0:
        return 0.0
    return float(min(max_s, base_s * 2 ** min(failures - 1, 30)))


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a child that ended is started again."""

    #: The first restart delay; each failure in a row doubles it.
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    #: Failures in a row from which the child is shown as crash-looping.
    crash_loop_after: int = 3
    #: Ready this long, its failures are forgotten (the next failure waits ``backoff_s``).
    reset_after_s: float = 60.0

    @classmethod
    def of(cls, cfg: FleetConfig) -> RestartPolicy:
        """The policy ``cfg`` sets."""
        return cls(
            cfg.restart_backoff_s,
            cfg.restart_backoff_max_s,
            cfg.crash_loop_after,
            cfg.backoff_reset_s,
        )


@dataclass
class Member:
    """A worker or the router, as the supervisor keeps it alive."""

    name: str
    role: MemberRole
    spec: ChildSpec
    ready_path: str
    pool: str = ""
    router_pool: str = "default"
    device: str = ""
    serves: str = ""
    state: MemberState = MemberState.PENDING
    handle: ChildHandle | None = None
    restarts: int = 0
    #: Failures since it last stayed ready for ``RestartPolicy.reset_after_s``.
    failures: int = 0
    last_exit: int | None = None
    last_error: str = ""
    started_at: float | None = None
    ready_since: float | None = None
    next_try_at: float | None = None
    #: Set once the member has been ready or has failed at least once (start-up gate).
    settled: bool = False
    #: It has been ready at least once since ``up`` started.
    ever_ready: bool = False
    #: Size of its log when it was last started: what it wrote since begins there.
    log_offset: int = 0
    #: How its last run ended (None before the first one has).
    outcome: MemberOutcome | None = None

    # The state machine ---------------------------------------------------------------

    def _move(self, to: MemberState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state} -> {to}")
        self.state = to

    def start(self, now: float) -> None:
        """A start begins (the first, or a restart after its back-off)."""
        if self.state in (MemberState.BACKOFF, MemberState.CRASH_LOOP):
            self.restarts += 1
        self._move(MemberState.STARTING)
        self.started_at, self.next_try_at, self.outcome = now, None, None

    def ready(self, now: float) -> None:
        """It answered its readiness path."""
        self._move(MemberState.READY)
        self.ready_since, self.settled, self.ever_ready = now, True, True
        self.outcome = MemberOutcome.READY

    def ended(self, outcome: MemberOutcome, now: float, policy: RestartPolicy) -> float:
        """Its run ended short of a stop (``outcome``): one more failure; the delay before
        the next start (it is due at ``next_try_at``).
        """
        if outcome in (MemberOutcome.READY, MemberOutcome.STOPPING):
            raise InvalidTransition(f"{self.name}: a run does not end as {outcome}")
        self._forget_failures_if_stayed_ready(now, policy)
        self.failures += 1
        self.settled = True
        delay = backoff_delay(self.failures, policy.backoff_s, policy.backoff_max_s)
        looping = self.failures >= policy.crash_loop_after
        self._move(MemberState.CRASH_LOOP if looping else MemberState.BACKOFF)
        self.next_try_at = now + delay
        self.ready_since = None
        self.outcome = outcome
        return delay

    def stopping(self, now: float, policy: RestartPolicy) -> None:
        """The fleet stops it (drain, then kill past the budget)."""
        self._forget_failures_if_stayed_ready(now, policy)
        self._move(MemberState.STOPPING)
        self.ready_since, self.next_try_at = None, None
        self.outcome = MemberOutcome.STOPPING

    def stopped(self) -> None:
        """It is gone for good (or was never started)."""
        if self.state != MemberState.STOPPED:
            self._move(MemberState.STOPPED)
        self.ready_since, self.next_try_at = None, None

    def _forget_failures_if_stayed_ready(self, now: float, policy: RestartPolicy) -> None:
        if self.ready_since is not None and now - self.ready_since >= policy.reset_after_s:
            self.failures = 0

    # What it is ----------------------------------------------------------------------

    @property
    def is_crash_looping(self) -> bool:
        """Shown as crash-looping: it failed ``crash_loop_after`` times in a row."""
        return self.state == MemberState.CRASH_LOOP

    @property
    def url(self) -> str:
        """Where the child serves (the spec as last started: a launcher may move it)."""
        return self.spec.url

    @property
    def pid(self) -> int | None:
        """The running child's pid."""
        handle = self.handle
        if handle is None or handle.returncode is not None:
            return None
        return handle.pid

    def row(self, now: float | None = None) -> dict[str, Any]:
        """This member as plain data for the state file and ``gpufleet status``."""
        now = time.monotonic() if now is None else now
        return {
            "name": self.name,
            "role": str(self.role),
            "pool": self.pool,
            "router_pool": self.router_pool,
            # A launcher that places the child elsewhere (Ray) says where: node and GPU.
            "device": self.spec.labels.get("placement", self.device),
            "cuda_visible_devices": self.spec.env.get("CUDA_VISIBLE_DEVICES"),
            "serves": self.serves,
            "url": self.url,
            "port": self.spec.port,
            "labels": dict(self.spec.labels),
            "pid": self.pid,
            "state": str(self.state),
            "restarts": self.restarts,
            "failures": self.failures,
            "last_exit": self.last_exit,
            "last_error": self.last_error,
            "next_try_in_s": (
                None if self.next_try_at is None else round(max(0.0, self.next_try_at - now), 1)
            ),
            "log": str(self.spec.log_path),
        }


__all__ = [
    "TRANSITIONS",
    "InvalidTransition",
    "Member",
    "RestartPolicy",
    "backoff_delay",
]
