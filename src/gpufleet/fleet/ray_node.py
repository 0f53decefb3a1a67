"""What a worker actor does on its node besides running the worker.

It fills the node placeholders of the worker's command (``{host}``, ``{port}``, …),
picks a free port for a server that cannot take port 0, reads the port a server bound,
has the worker SIGKILLed when the actor's thread dies (``PR_SET_PDEATHSIG``, Linux), and
removes the work folders of actors that are gone (their pid is in the folder's name).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

from gpufleet.fleet.rundir import is_alive

#: What the actor fills in on its node; other braces (JSON arguments, say) stay as they are.
NODE_PLACEHOLDERS = ("python", "host", "port", "port_file", "gpu", "index", "config")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(NODE_PLACEHOLDERS) + r")\}")
_PR_SET_PDEATHSIG = 1
#: A worker actor's work folder is named ``<prefix><its pid>-<random>``.
WORKDIR_PREFIX: Final = "gpufleet-ray-"


def sweep_stale_workdirs(root: Path) -> list[Path]:
    """Remove the work folders of actors that are gone (their pid is in the name)."""
    removed = []
    for folder in root.glob(f"{WORKDIR_PREFIX}*"):
        pid = folder.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or is_alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def fill_placeholders(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Replace the node placeholders (``{host}``, ``{port}``, …) inside each argument."""
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), a) for a in argv]


def pick_free_port(host: str) -> int:
    """A port free on ``host`` a moment ago (for servers that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def death_signal_setter() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGKILLed when the thread that forked it dies.

    Linux only (None elsewhere). libc is looked up here, in the parent: between fork and
    exec in a threaded process (a Ray actor) the child must do as little as possible.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # The parent may have died between fork and prctl: then nobody will signal us.
        if os.getppid() != parent:
            os._exit(1)

    return set_death_signal


async def read_port_file(path: Path, proc: asyncio.subprocess.Process, timeout_s: float) -> int:
    """Wait for the worker to write its bound port to ``path``.

    Raises:
        RuntimeError: the process exited first.
        TimeoutError: no port within ``timeout_s``.
    """
    async with asyncio.timeout(timeout_s):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"worker exited with status {proc.returncode} before binding")
            with contextlib.suppress(FileNotFoundError, ValueError):
                text = (await asyncio.to_thread(path.read_text)).strip()
                if text:
                    return int(text)
            # The file appears without an event to wait on; the child's exit cuts this short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 0.05)


__all__ = [
    "NODE_PLACEHOLDERS",
    "WORKDIR_PREFIX",
    "death_signal_setter",
    "fill_placeholders",
    "pick_free_port",
    "read_port_file",
    "sweep_stale_workdirs",
]
