"""The seam between the supervisor and where children run: local processes now, Ray later.

The supervisor only needs to start a child from a :class:`ChildSpec` and then wait for,
signal, stop or kill it; a launcher that places children on other machines (Ray actors
with one GPU each) implements the same two protocols and reports each child's URL.
"""

from __future__ import annotations

from typing import Protocol

from gpufleet.fleet.process import ChildSpec, LocalProcess


class ChildHandle(Protocol):
    """A started child, wherever it runs."""

    @property
    def spec(self) -> ChildSpec:
        """The spec as started (a remote launcher may have changed host and port)."""
        ...

    @property
    def pid(self) -> int:
        """Process id (on the machine it runs on)."""
        ...

    @property
    def url(self) -> str:
        """Base URL of its HTTP server."""
        ...

    @property
    def returncode(self) -> int | None:
        """Exit status once it has exited, else None."""
        ...

    async def wait(self) -> int:
        """Wait until it exits; its exit status."""
        ...

    def send(self, sig: int) -> None:
        """Deliver a signal (SIGTERM drains a gpufleet process)."""
        ...

    async def stop(self, grace_s: float, kill_after_s: float = 0.0) -> int:
        """Ask it to stop, force it past the budget; its exit status."""
        ...

    async def kill(self) -> int:
        """Stop it at once."""
        ...

    async def aclose(self) -> None:
        """Make sure it is gone and its resources released."""
        ...


class Launcher(Protocol):
    """Starts children from specs."""

    name: str

    async def start(self, spec: ChildSpec) -> ChildHandle:
        """Start ``spec``; raises OSError when it cannot be started at all."""
        ...


class LocalLauncher:
    """Children are processes of this machine, each in its own process group."""

    name = "local"

    async def start(self, spec: ChildSpec) -> ChildHandle:
        return await LocalProcess.start(spec)


__all__ = ["ChildHandle", "Launcher", "LocalLauncher"]
