"""Serve the simulated engine until SIGTERM (``main``), or run one as a child process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence

from aiohttp import web

from gpufleet._listener import write_port_file
from gpufleet.errors import ConfigError
from gpufleet.testing._process import ServerProcess, run_module
from gpufleet.testing.llm.app import make_app
from gpufleet.testing.llm.config import EngineConfig, add_engine_flags, config_from_args


async def _serve(host: str, port: int, port_file: str | None, cfg: EngineConfig) -> None:
    runner = web.AppRunner(make_app(cfg), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    if port_file:
        await asyncio.to_thread(write_port_file, port_file, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Run one simulated engine until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m gpufleet.testing.llm_engine")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    add_engine_flags(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    serve = _serve(args.host, args.port, args.port_file, cfg)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve)
    else:
        uvloop.run(serve)


@contextlib.contextmanager
def run_engine(*args: str, port: int = 0, timeout: float = 30.0) -> Iterator[ServerProcess]:
    """Run a simulated engine process (``args``: its flags) on 127.0.0.1 until the block ends."""
    with run_module("gpufleet.testing.llm_engine", args, port=port, timeout=timeout) as server:
        yield server
