"""Every state and role name that crosses a process boundary (or a status file), as enums.

They are ``StrEnum``s: a member *is* its string, so ``UpstreamState.READY == "ready"``,
JSON encoders write the plain string, and readers of older files keep working. Compare
with the member, never with a literal: renaming a state then changes every site at once.
"""

from __future__ import annotations

from enum import StrEnum


class WorkerState(StrEnum):
    """A worker's ``state`` on ``/stats`` and ``status`` on ``/health``."""

    LOADING = "loading"  # the model is loading: /health answers 503
    READY = "ready"
    STALLED = "stalled"  # the device thread is stuck on one call (/health 503, with reason)
    DRAINING = "draining"  # first SIGTERM: finishing in-flight work, taking none
    FAILED = "failed"  # the model could not load (/health 503, with message)


class RouterState(StrEnum):
    """The router's ``state`` on ``/stats`` and ``status`` on ``/health``."""

    STARTING = "starting"  # no upstream has been seen ready yet (/stats)
    READY = "ready"
    DRAINING = "draining"
    #: ``/health``'s 503 ``status`` while nothing can take a request.
    NO_READY_UPSTREAM = "no ready upstream"


class UpstreamState(StrEnum):
    """One upstream as the router sees it (``/stats``' ``upstreams[].state``, admin answers)."""

    STARTING = "starting"  # added, not yet seen healthy
    READY = "ready"
    EJECTED = "ejected"  # failed probes or passive ejection: waits for a probe to pass
    DRAINING = "draining"  # removed through the admin API: finishing in-flight work
    REMOVED = "removed"  # gone from the registry (what a late holder of it sees)


class MemberRole(StrEnum):
    """What a supervised child of ``gpufleet up`` is."""

    WORKER = "worker"
    ROUTER = "router"


class MemberState(StrEnum):
    """A supervised child's state in ``gpufleet up``'s status file and table."""

    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"  # failed; waits before its next start
    CRASH_LOOP = "crash-looping"
    STOPPING = "stopping"
    STOPPED = "stopped"


class MemberOutcome(StrEnum):
    """How one start or one watch of a supervised child ended (the supervisor's verdict)."""

    READY = "ready"  # it answered its readiness path
    STOPPING = "stopping"  # the fleet is stopping: not a failure
    EXITED = "exited"  # the process ended (a clean exit 0 is no failure to report)
    FAILED = "failed"
    TIMEOUT = "timeout"  # not ready within its start timeout
    UNRESPONSIVE = "unresponsive"  # ready once, then stopped answering its probes


class FleetPhase(StrEnum):
    """``gpufleet up`` as a whole (``phase`` in its status file)."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


__all__ = [
    "FleetPhase",
    "MemberOutcome",
    "MemberRole",
    "MemberState",
    "RouterState",
    "UpstreamState",
    "WorkerState",
]
