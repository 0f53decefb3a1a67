"""The server skeleton the worker and the router share (``gpufleet._listener``), in process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gpufleet._listener import Listener, write_port_file
from gpufleet._server import ServerLog
from gpufleet.errors import ConfigError

log = logging.getLogger("gpufleet.test")


def _app() -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    return app


def _listener(port: int = 0, flag: str = "--port") -> Listener:
    return Listener(
        _app(),
        host="127.0.0.1",
        port=port,
        logger=ServerLog("gpufleet.test.http"),
        shutdown_timeout_s=1.0,
        flag=flag,
    )


async def test_port_zero_is_the_bound_port_and_the_port_file_says_it(tmp_path: Path) -> None:
    port_file = tmp_path / "run" / "router.port"
    async with _listener() as listener:
        assert listener.port > 0
        await listener.write_port_file(port_file)
        assert port_file.read_text() == f"{listener.port}\n"
        assert sorted(p.name for p in port_file.parent.iterdir()) == ["router.port"]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{listener.port}/health") as r,
        ):
            assert r.status == 200
    # Closed on leaving: the port is free again.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=1).close()


def test_the_port_is_unknown_before_listening() -> None:
    listener = _listener()
    with pytest.raises(RuntimeError, match="not listening"):
        _ = listener.port


async def test_a_port_in_use_is_one_line_naming_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigError, match=rf"port {port} on 127\.0\.0\.1 is in use.*--admin-port"
        ):
            async with _listener(port, flag="--admin-port"):
                pytest.fail("listened on a port in use")


async def test_the_first_signal_drains_and_handlers_go_with_the_listener() -> None:
    drained: list[bool] = []
    async with _listener() as listener:
        listener.handle_signals(log, lambda: drained.append(True))
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            await listener.stop.wait()
        assert drained == [True]
    # Removed on leaving: the default handler is back (a later SIGTERM is not swallowed).
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_write_port_file_makes_its_folder(tmp_path: Path) -> None:
    write_port_file(tmp_path / "a" / "b" / "port", 8123)
    assert (tmp_path / "a" / "b" / "port").read_text() == "8123\n"
