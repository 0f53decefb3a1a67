"""The run directory of a fleet: pid file, state JSON, the router's port file.

``gpufleet up`` (attached or ``--detach``) claims it; ``gpufleet status`` reads the state
it keeps current; ``gpufleet down`` signals the pid it names.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from gpufleet import _files
from gpufleet.errors import ConfigError


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600, its folder made) so readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _files.write_atomic(path, text, mode=0o600)


def is_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (and is not a zombie we could see)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"
    return True


def is_gpufleet(pid: int) -> bool:
    """True when ``pid`` runs and its command line names gpufleet (``-m gpufleet``, ``…/gpufleet``).

    A pid file can outlive its fleet (a crash, a reboot) and the pid be reused by another
    program: nothing is signalled, and no directory stays taken, on a pid alone. Without
    ``/proc`` (not Linux) the pid is trusted.
    """
    if not is_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        # No /proc at all: nothing to check against. Else the process has just gone.
        return not Path("/proc/self").exists()
    except OSError:
        return True
    # Whole arguments, not a substring: any Python of a checkout named gpufleet has it in
    # its path.
    names = (os.path.basename(arg) for arg in cmdline.split(b"\0"))
    return any(n == b"gpufleet" or n.startswith(b"gpufleet.") for n in names)


class RunDir:
    """Files of one running fleet, in ``path`` (``.gpufleet`` by default)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def pid_file(self) -> Path:
        return self.path / "fleet.pid"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def router_port_file(self) -> Path:
        return self.path / "router.port"

    @property
    def log_file(self) -> Path:
        """Where ``--detach`` sends the supervisor's own output."""
        return self.path / "fleet.log"

    def running_pid(self) -> int | None:
        """The pid of the fleet that owns this directory, if it still runs (as gpufleet)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if is_gpufleet(pid) else None

    def check_free(self, pid: int | None = None) -> None:
        """Raise unless no live fleet other than ``pid`` owns the directory.

        Raises:
            ConfigError: another live fleet owns the directory.
        """
        other = self.running_pid()
        if other is not None and other != pid:
            raise ConfigError(
                f"a fleet (pid {other}) already runs from {self.path}; "
                "stop it with `gpufleet down` or use another --run-dir"
            )

    def claim(self, pid: int) -> None:
        """Make ``pid`` the owner.

        Raises:
            ConfigError: another live fleet owns the directory.
        """
        self.check_free(pid)
        write_atomic(self.pid_file, f"{pid}\n")

    def release(self, pid: int) -> None:
        """Remove the pid file if ``pid`` still owns it."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            if int(self.pid_file.read_text().strip()) == pid:
                self.pid_file.unlink()

    def write_state(self, data: dict[str, Any]) -> None:
        """Replace the state file."""
        write_atomic(self.state_file, json.dumps(data, indent=2) + "\n")

    def read_state(self) -> dict[str, Any] | None:
        """The last state written, or None."""
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None


__all__ = ["RunDir", "is_alive", "is_gpufleet", "write_atomic"]
