"""One local child process: spawn it with its env and log file, wait, stop it, kill it.

Each child leads its own process group, so a foreign server's own children (vLLM's
engine processes, say) are signalled with it, and whatever the group still holds once
the child has exited is killed: no GPU memory or port is left held by an orphan. On
Linux each child also gets ``PR_SET_PDEATHSIG`` = SIGTERM: its own session keeps it out
of reach of a terminal's signals, so without that a SIGKILLed ``up`` would leave it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.fleet.logfile import RotatingLog

log = logging.getLogger("gpufleet.fleet")

_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What to start: the command line, its whole environment, where it listens and logs."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    host: str
    port: int
    log_path: Path
    log_max_bytes: int = 50 * 1024 * 1024
    log_backups: int = 3
    cwd: str | None = None
    #: Shown in start-up lines and status (the GPU, ``cpu``, or ``router``).
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the child's HTTP server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in {"0.0.0.0", "::"}:
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"


_PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent ``sig`` when this process dies (Linux).

    The kernel sends it when the thread that forked the child exits: children are
    spawned from the event loop's thread, which lives as long as ``up``. libc is looked
    up here, in the parent, so the child does as little as possible between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os._exit(1)

    return set_death_signal


class LocalProcess:
    """A running child of this machine (the ``ChildHandle`` of ``LocalLauncher``)."""

    def __init__(self, spec: ChildSpec, proc: asyncio.subprocess.Process, log_file: RotatingLog):
        self.spec = spec
        self._proc = proc
        self._log = log_file
        self._pump = asyncio.ensure_future(self._copy_output())
        self._waited: asyncio.Future[int] | None = None

    @classmethod
    async def start(cls, spec: ChildSpec) -> LocalProcess:
        """Spawn ``spec`` in a new session, its stdout and stderr into its rotating log."""
        log_file = RotatingLog(spec.log_path, spec.log_max_bytes, spec.log_backups)
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(spec.env),
                cwd=spec.cwd,
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )
        except OSError:
            log_file.close()
            raise
        return cls(spec, proc, log_file)

    @property
    def pid(self) -> int:
        """The child's pid (also its process group id)."""
        return int(self._proc.pid)

    @property
    def url(self) -> str:
        """Where the child serves HTTP."""
        return self.spec.url

    @property
    def returncode(self) -> int | None:
        """Exit status once the child has been reaped, else None."""
        return self._proc.returncode

    async def _copy_output(self) -> None:
        stream = self._proc.stdout
        if stream is None:
            return
        try:
            while chunk := await stream.read(_CHUNK):
                # A local append of at most 64 KiB: cheap enough to do on the loop.
                self._log.write(chunk)
        finally:
            self._log.close()

    async def wait(self) -> int:
        """Wait for the child to exit; then kill what is left of its process group."""
        if self._waited is None:
            self._waited = asyncio.ensure_future(self._wait_and_clean())
        return await asyncio.shield(self._waited)

    async def _wait_and_clean(self) -> int:
        code = await self._proc.wait()
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.shield(self._pump)
        return code

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def send(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (no-op once it has exited)."""
        if self._proc.returncode is None:
            self._signal_group(sig)

    async def stop(self, grace_s: float, kill_after_s: float = 0.0) -> int:
        """SIGTERM the group, wait ``grace_s`` + ``kill_after_s``, then SIGKILL; the exit code."""
        self.send(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s + kill_after_s):
                return await self.wait()
        except TimeoutError:
            log.warning("%s (pid %d) did not stop in time: killing it", self.spec.name, self.pid)
        return await self.kill()

    async def kill(self) -> int:
        """SIGKILL the group and reap the child."""
        self.send(signal.SIGKILL)
        return await self.wait()

    async def aclose(self) -> None:
        """Kill the child if it still runs and release its log."""
        if self._proc.returncode is None:
            await self.kill()
        else:
            await self.wait()
        if not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


__all__ = ["ChildSpec", "LocalProcess", "parent_death_signal"]
