"""Worker ports: consecutive from a base port, or free ones; chosen once, kept for good.

A worker keeps its port across restarts, so the router's pool never has to change
addresses and a restarted worker is the same upstream as before.
"""

from __future__ import annotations

import socket

from gpufleet._sockets import port_in_use
from gpufleet.errors import ConfigError


def is_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound right now (``SO_REUSEADDR``, like servers do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out distinct ports on ``host``: ``base``, ``base+1``, … or free ones (``base=0``)."""

    def __init__(self, host: str, base: int = 0, *, avoid: set[int] | None = None) -> None:
        self._host = host
        self._next = base
        self._taken: set[int] = set(avoid or ())

    def take(self) -> int:
        """The next port.

        Raises:
            ConfigError: the next port from the base is already in use.
        """
        if self._next == 0:
            return self._take_free()
        port = self._next
        while port in self._taken:
            port += 1
        if port > 65535:
            raise ConfigError("worker ports ran past 65535; lower --worker-base-port")
        if not is_free(self._host, port):
            raise port_in_use(self._host, port, flag="--worker-base-port")
        self._taken.add(port)
        self._next = port + 1
        return port

    def _take_free(self) -> int:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        for _ in range(100):
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((self._host, 0))
                port = int(s.getsockname()[1])
            if port not in self._taken:
                self._taken.add(port)
                return port
        raise ConfigError(f"no free port found on {self._host}")


__all__ = ["PortAllocator", "is_free"]
