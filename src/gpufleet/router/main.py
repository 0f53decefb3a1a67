"""The router process: bind, write the port file, serve, drain on the first SIGTERM.

The life of the process is ``gpufleet._listener.Listener``'s, as the worker's is; the
router adds its admin API's own listener (``admin_port``), the ``on_listen`` hooks (before
the port file, so a reader of the port file finds them done) and waits for its proxied
requests to finish when it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack

from aiohttp import web

from gpufleet._listener import Listener
from gpufleet._server import ServerLog
from gpufleet.config.router import RouterConfig
from gpufleet.router.app import ADMIN_APP_KEY, STATE_KEY, Extension, RouterState, create_app

log = logging.getLogger("gpufleet.router")


async def serve(cfg: RouterConfig, *, extensions: tuple[Extension, ...] = ()) -> None:
    """Run the router until SIGTERM/SIGINT: the first drains, a second stops at once."""
    app = create_app(cfg, extensions=extensions)
    state = app[STATE_KEY]

    def count_bad() -> None:
        state.totals.bad_requests += 1

    listener = Listener(
        app,
        host=cfg.host,
        port=cfg.port,
        logger=ServerLog("gpufleet.router.http", on_bad=count_bad),
        shutdown_timeout_s=cfg.drain_timeout_s,
        max_header_bytes=cfg.max_header_kb * 1024,
    )
    async with listener, contextlib.AsyncExitStack() as admin:
        await _serve_admin(app, cfg, admin)
        for hook in state.on_listen:
            await hook(own_url(cfg.host, listener.port))
        if cfg.port_file:
            await listener.write_port_file(cfg.port_file)
        log.info(
            "router listening on http://%s:%d (policy %s, %d upstream(s))",
            cfg.host,
            listener.port,
            cfg.policy,
            len(state.registry.all()),
        )
        listener.handle_signals(log)
        await listener.stop.wait()
        log.info("draining: health answers 503, in-flight requests finish")
        state.draining = True
        for drain in state.on_drain:
            drain()
        await _wait_idle(state, cfg.drain_timeout_s)
    log.info("router stopped")


async def _serve_admin(app: web.Application, cfg: RouterConfig, stack: AsyncExitStack) -> None:
    """Listen for the admin API on its own port when ``admin_port`` is set."""
    admin_app = app.get(ADMIN_APP_KEY)
    if admin_app is None or cfg.admin_port is None:
        return
    admin = Listener(
        admin_app,
        host=cfg.admin_host,
        port=cfg.admin_port,
        logger=ServerLog("gpufleet.router.admin"),
        shutdown_timeout_s=cfg.drain_timeout_s,
        flag="--admin-port",
    )
    await stack.enter_async_context(admin)
    log.info("admin API listening on http://%s:%d", cfg.admin_host, admin.port)


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
