"""One HTTP server process's life, shared by the worker and the router (issue 15).

``listen`` (port 0 gives the bound port, read from aiohttp's public ``runner.addresses``)
→ ``write_port_file`` (atomically: a reader never sees half a number) → the caller marks
itself ready → the first SIGTERM or SIGINT asks for a drain (``stop`` is set; what
draining means is the caller's) → a second one exits the process at once
(``EXIT_FORCED``) → leaving the ``async with`` stops listening and closes what is open.

A port that cannot be had is one line (``ConfigError`` from ``_sockets.bind_error``),
raised before anything listens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from gpufleet._files import write_atomic
from gpufleet._sockets import bind_error

#: Exit status of a second stop signal during a drain.
EXIT_FORCED = 1
#: Connections the kernel queues before ``accept``: bursts of new clients are not refused.
BACKLOG = 1024


def write_port_file(path: str | Path, port: int) -> None:
    """Write ``port`` to ``path`` atomically (its folder is made) (blocking)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, f"{port}\n")


class Listener:
    """An aiohttp application listening on ``host:port`` until the ``async with`` ends.

    Args:
        app: what is served.
        host, port: where; port 0 picks a free one (``port`` says which, once entered).
        logger: aiohttp's server logger (``_server.ServerLog``).
        shutdown_timeout_s: how long leaving waits for handlers still running.
        max_header_bytes: the longest request line and header field (aiohttp's 8190 when None).
        flag: the option named in the one-line error when the port cannot be had.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        host: str,
        port: int,
        logger: logging.Logger,
        shutdown_timeout_s: float,
        max_header_bytes: int | None = None,
        flag: str = "--port",
    ) -> None:
        limits: dict[str, Any] = {}
        if max_header_bytes is not None:
            limits = {"max_line_size": max_header_bytes, "max_field_size": max_header_bytes}
        self._runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            logger=logger,
            shutdown_timeout=shutdown_timeout_s,
            **limits,
        )
        self.host = host
        self._asked_port = port
        self._flag = flag
        self._port: int | None = None
        #: Set by the first stop signal (``handle_signals``).
        self.stop = asyncio.Event()
        self._signals = 0
        self._signals_handled = False

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one port 0 gave)."""
        if self._port is None:
            raise RuntimeError("the listener is not listening yet")
        return self._port

    async def __aenter__(self) -> Listener:
        """Listen.

        Raises:
            ConfigError: the port is in use, needs privileges, or the host is not here.
        """
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self._asked_port, backlog=BACKLOG, reuse_address=True
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise bind_error(exc, self.host, self._asked_port, flag=self._flag) from None
        self._port = _bound_port(self._runner)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._runner.cleanup()  # a second signal meanwhile still exits at once
        finally:
            if self._signals_handled:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def write_port_file(self, path: str | Path) -> None:
        """Write the bound port to ``path`` (off the loop)."""
        await asyncio.to_thread(write_port_file, path, self.port)

    def handle_signals(
        self, log: logging.Logger, on_drain: Callable[[], None] = lambda: None
    ) -> None:
        """On the first SIGTERM/SIGINT call ``on_drain`` and set ``stop``; on a second, exit.

        ``on_drain`` runs in the signal handler itself, so it only sets state (health
        turning 503 before anything else); the work of draining follows ``stop``.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig, log, on_drain)
        self._signals_handled = True

    def _on_signal(self, signum: int, log: logging.Logger, on_drain: Callable[[], None]) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting at once")
            os._exit(EXIT_FORCED)
        log.info("signal %s: draining", signal.Signals(signum).name)
        on_drain()
        self.stop.set()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the server is not listening on a TCP port")


__all__ = ["BACKLOG", "EXIT_FORCED", "Listener", "write_port_file"]
