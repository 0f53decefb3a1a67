"""Serve the simulated engine until SIGTERM (``main``), or run one as a child process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from aiohttp import web

from gpufleet.errors import ConfigError
from gpufleet.testing._process import ServerProcess, wait_healthy
from gpufleet.testing.llm.app import make_app
from gpufleet.testing.llm.config import EngineConfig, add_engine_flags, config_from_args


def _write_port(path: str, port: int) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


async def _serve(host: str, port: int, port_file: str | None, cfg: EngineConfig) -> None:
    runner = web.AppRunner(make_app(cfg), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    if port_file:
        await asyncio.to_thread(_write_port, port_file, bound)
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
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-llm-engine-"))
    port_file = workdir / "port"
    log_path = workdir / "process.log"
    cmd = [sys.executable, "-m", "gpufleet.testing.llm_engine", *args]
    cmd += ["--port", str(port), "--port-file", str(port_file)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"engine did not start: {log_path.read_text()}")
            time.sleep(0.02)
        bound = int(port_file.read_text())
        url = f"http://127.0.0.1:{bound}"
        wait_healthy(url, timeout=timeout, proc=proc)
        yield ServerProcess(proc, url, bound, log_path, workdir)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
