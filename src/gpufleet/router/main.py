"""The router process: bind, write the port file, serve, drain on the first SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from pathlib import Path

from aiohttp import web

from gpufleet._server import ServerLog
from gpufleet._sockets import bind_error
from gpufleet.config.router import RouterConfig
from gpufleet.router.app import ADMIN_APP_KEY, STATE_KEY, Extension, RouterState, create_app

log = logging.getLogger("gpufleet.router")


def write_port_file(path: str, port: int) -> None:
    """Write ``port`` to ``path`` atomically (readers never see a half-written file)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".port-")
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{port}\n")
    os.replace(tmp, target)


async def serve(cfg: RouterConfig, *, extensions: tuple[Extension, ...] = ()) -> None:
    """Run the router until SIGTERM/SIGINT: the first drains, a second stops at once."""
    app = create_app(cfg, extensions=extensions)
    state = app[STATE_KEY]
    header_limit = cfg.max_header_kb * 1024

    def count_bad() -> None:
        state.totals.bad_requests += 1

    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        logger=ServerLog("gpufleet.router.http", on_bad=count_bad),
        max_line_size=header_limit,
        max_field_size=header_limit,
        shutdown_timeout=cfg.drain_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, backlog=1024, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise bind_error(exc, cfg.host, cfg.port) from None
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else cfg.port
    admin_runner = await _serve_admin(app, cfg, runner)
    for hook in state.on_listen:
        await hook(own_url(cfg.host, port))
    if cfg.port_file:
        await asyncio.to_thread(write_port_file, cfg.port_file, port)
    log.info(
        "router listening on http://%s:%d (policy %s, %d upstream(s))",
        cfg.host,
        port,
        cfg.policy,
        len(state.registry.all()),
    )

    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: stopping now")
            os._exit(1)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await stop.wait()
        log.info("draining: health answers 503, in-flight requests finish")
        state.draining = True
        for drain in state.on_drain:
            drain()
        await _wait_idle(state, cfg.drain_timeout_s)
    finally:
        if admin_runner is not None:
            await admin_runner.cleanup()
        await runner.cleanup()
        log.info("router stopped")


async def _serve_admin(
    app: web.Application, cfg: RouterConfig, main_runner: web.AppRunner
) -> web.AppRunner | None:
    """Bind the admin API's own listener when ``admin_port`` is set; its runner."""
    admin_app = app.get(ADMIN_APP_KEY)
    if admin_app is None or cfg.admin_port is None:
        return None
    runner = web.AppRunner(
        admin_app,
        handler_cancellation=True,
        access_log=None,
        logger=ServerLog("gpufleet.router.admin"),
    )
    await runner.setup()
    site = web.TCPSite(runner, cfg.admin_host, cfg.admin_port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await main_runner.cleanup()
        raise bind_error(exc, cfg.admin_host, cfg.admin_port) from None
    log.info("admin API listening on http://%s:%d", cfg.admin_host, cfg.admin_port)
    return runner


def own_url(host: str, port: int) -> str:
    """How this process reaches its own listener (a wildcard address: loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _wait_idle(state: RouterState, timeout_s: float) -> None:
    """Wait until no proxied request is in progress, at most ``timeout_s``."""
    proxy = state.proxy
    if proxy is None or not proxy.active:
        return
    proxy.idle = asyncio.Event()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await proxy.idle.wait()
