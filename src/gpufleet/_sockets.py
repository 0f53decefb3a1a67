"""Listening ports: who holds one, and the one line that says a port cannot be had.

``gpufleet up``, ``worker`` and ``router`` answer a port in use with one line naming the
port and, where Linux's ``/proc`` tells (``/proc/net/tcp*`` for the socket's inode, then
``/proc/PID/fd`` for who holds it: only this user's processes can be seen), the process
that listens on it, never with a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from gpufleet.errors import ConfigError

#: ``st`` of a listening socket in ``/proc/net/tcp``.
_LISTEN = "0A"
#: Processes looked at before giving up (a machine with very many).
_MAX_PIDS = 20000


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                cells = line.split()
                if len(cells) < 10 or cells[3] != _LISTEN:
                    continue
                _, _, hex_port = cells[1].rpartition(":")
                with contextlib.suppress(ValueError):
                    if int(hex_port, 16) == port and cells[9] != "0":
                        inodes.add(cells[9])
    return inodes


def _command(pid: str, proc: Path) -> str:
    with contextlib.suppress(OSError):
        raw = (proc / pid / "cmdline").read_bytes()
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if args:
            return " ".join([os.path.basename(args[0]), *args[1:]])[:120]
    return "?"


def port_holder(port: int, *, proc: Path = Path("/proc")) -> str | None:
    """``pid 123: python3 -m http.server 8103`` for the process listening on ``port``.

    None when nothing is found: no ``/proc``, no listener, or another user's process.
    """
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    with contextlib.suppress(OSError):
        pids = [p.name for p in proc.iterdir() if p.name.isdigit()][:_MAX_PIDS]
        for pid in pids:
            with contextlib.suppress(OSError), os.scandir(proc / pid / "fd") as fds:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        if os.readlink(fd.path) in wanted:
                            return f"pid {pid}: {_command(pid, proc)}"
    return None


def port_in_use(host: str, port: int, *, flag: str = "--port") -> ConfigError:
    """The error for ``host:port`` taken: the port, who holds it if known, what to do."""
    who = port_holder(port)
    held = f" (held by {who})" if who else ""
    return ConfigError(f"port {port} on {host} is in use{held}; pick another {flag} or 0")


def bind_error(exc: OSError, host: str, port: int, *, flag: str = "--port") -> ConfigError:
    """One line for a failed bind of ``host:port``: in use, not allowed, or no such address."""
    if exc.errno == errno.EADDRINUSE:
        return port_in_use(host, port, flag=flag)
    if exc.errno == errno.EACCES:
        return ConfigError(f"port {port} on {host} needs privileges; pick {flag} 1024 or above")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return ConfigError(f"cannot listen on {host}: no such address on this machine")
    return ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


__all__ = ["bind_error", "port_holder", "port_in_use"]
