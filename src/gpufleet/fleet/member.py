"""One supervised child's bookkeeping: state, restarts, back-off, and its status row."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from gpufleet.fleet.launcher import ChildHandle
from gpufleet.fleet.process import ChildSpec

PENDING: Final = "pending"
STARTING: Final = "starting"
READY: Final = "ready"
BACKOFF: Final = "backoff"
CRASH_LOOP: Final = "crash-looping"
STOPPING: Final = "stopping"
STOPPED: Final = "stopped"


def backoff_delay(failures: int, base_s: float, max_s: float) -> float:
    """Capped exponential back-off: ``base``, ``2·base``, ``4·base`` … up to ``max_s``."""
    if failures <= 0:
        return 0.0
    return float(min(max_s, base_s * 2 ** min(failures - 1, 30)))


@dataclass
class Member:
    """A worker or the router, as the supervisor keeps it alive."""

    name: str
    role: str  # "worker" | "router"
    spec: ChildSpec
    ready_path: str
    pool: str = ""
    router_pool: str = "default"
    device: str = ""
    serves: str = ""
    state: str = PENDING
    handle: ChildHandle | None = None
    restarts: int = 0
    #: Failures since it last stayed ready for ``backoff_reset_s``.
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
            "role": self.role,
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
            "state": self.state,
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
    "BACKOFF",
    "CRASH_LOOP",
    "PENDING",
    "READY",
    "STARTING",
    "STOPPED",
    "STOPPING",
    "Member",
    "backoff_delay",
]
