"""``gpufleet up --detach`` and ``gpufleet down``: a fleet in the background, and its stop.

Both run at the command line's edge, before or without an event loop, so they wait
with plain sleeps on another process's pid and state file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpufleet.fleet.logfile import last_lines, log_size
from gpufleet.fleet.rundir import RunDir, is_alive


@dataclass(frozen=True, slots=True)
class Detached:
    """A fleet started in the background."""

    pid: int
    #: ``running`` once the router answered; else why it is not (``exited 2``, ``timeout``).
    outcome: str
    endpoint: str | None
    #: Its exit status when it exited before it was running.
    code: int | None = None
    #: What it wrote to the run directory's log, once it exited (its reasons).
    said: tuple[str, ...] = ()


def start_detached(
    argv: Sequence[str],
    run_dir: RunDir,
    *,
    env: Mapping[str, str],
    cwd: str,
    timeout_s: float,
) -> Detached:
    """Run ``argv`` (an ``up`` without ``--detach``) in its own session; wait until it serves.

    Raises:
        ConfigError: a live fleet already runs from ``run_dir`` (its state is left alone).
    """
    # Before anything is touched: the state file below belongs to the live fleet, if any.
    run_dir.check_free()
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.state_file.unlink(missing_ok=True)
    log_from = log_size(run_dir.log_file)
    with run_dir.log_file.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            said = tuple(_reasons(last_lines(run_dir.log_file, log_from, count=200)))
            return Detached(proc.pid, f"exited with status {code}", None, code, said)
        state = run_dir.read_state()
        if state is not None and state.get("pid") == proc.pid and state.get("phase") == "running":
            return Detached(proc.pid, "running", str(state.get("endpoint")))
        time.sleep(0.2)
    return Detached(proc.pid, f"not ready after {timeout_s:g}s (still starting)", None)


def _reasons(lines: list[str]) -> list[str]:
    """The lines ``up`` says to its user (not its log records): at most 20, the last ones."""
    said = [line for line in lines if line.startswith(("gpufleet:", "  "))]
    return (said or lines[-6:])[-20:]


def stop_fleet(
    run_dir: RunDir, *, timeout_s: float, force: bool = False
) -> tuple[int | None, bool]:
    """SIGTERM the fleet of ``run_dir`` and wait; ``force`` sends the second signal at once.

    Returns the pid (None when nothing runs) and whether it has exited. A pid file whose
    process is gone, or is no gpufleet process (a reused pid), counts as nothing running.
    """
    pid = run_dir.running_pid()
    if pid is None:
        return None, True
    os.kill(pid, signal.SIGTERM)
    if force:
        time.sleep(0.2)
        if is_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return pid, True
        time.sleep(0.1)
    return pid, False


__all__ = ["Detached", "start_detached", "stop_fleet"]
