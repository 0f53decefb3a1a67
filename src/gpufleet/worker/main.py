"""The worker process: listen, write the port file, load the model, serve, drain on SIGTERM.

Order matters for the layers above: the socket listens (and ``--port-file`` is written)
before the model loads, so ``/health`` answers 503 "loading" meanwhile; the first SIGTERM
turns health 503 before anything else, finishes in-flight work (bounded by
``drain_timeout_s``) and exits 0; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from gpufleet._server import ServerLog
from gpufleet._sockets import bind_error
from gpufleet.config.worker import WorkerConfig
from gpufleet.models import check_model_spec
from gpufleet.worker.app import build_app
from gpufleet.worker.service import WorkerService

log = logging.getLogger("gpufleet.worker")

#: Exit status when the model fails to load (a supervisor restarts with back-off).
EXIT_LOAD_FAILED = 1
#: Exit status of a second signal during a drain.
EXIT_FORCED = 1


def write_port_file(path: str, port: int) -> None:
    """Write ``port`` to ``path`` atomically (a reader never sees a partial number)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the server is not listening on a TCP port")


async def serve(cfg: WorkerConfig) -> int:
    """Run one worker until it is told to stop; return the process exit status.

    Raises:
        ConfigError: the model cannot be imported, or the port cannot be had (before
            anything listens: one line at the command line, exit 2).
    """
    check_model_spec(cfg.model)
    service = WorkerService(cfg)
    app = build_app(service)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        logger=ServerLog("gpufleet.worker.http", on_bad=service.metrics.bad_requests.inc),
        shutdown_timeout=cfg.drain_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, backlog=1024, shutdown_timeout=1.0)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await service.aclose()
        raise bind_error(exc, cfg.host, cfg.port) from None
    port = _bound_port(runner)
    if cfg.port_file:
        await asyncio.to_thread(write_port_file, cfg.port_file, port)
    log.info("worker listening on http://%s:%d (model %s loading)", cfg.host, port, cfg.model)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal: exiting at once")
            os._exit(EXIT_FORCED)
        log.info("signal %s: draining", signal.Signals(signum).name)
        service.state = "draining"
        service.metrics.ready.set(0)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    code = 0
    load_task = asyncio.create_task(service.load(), name="load-model")
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({load_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if load_task.done() and load_task.exception() is not None:
            log.error("model %s failed to load: %s", cfg.model, load_task.exception())
            code = EXIT_LOAD_FAILED
        else:
            await stop_task
            finished = await service.drain(cfg.drain_timeout_s)
            if not finished:
                log.warning(
                    "drain timeout (%.1fs): %d request(s) still in flight",
                    cfg.drain_timeout_s,
                    service.counters.in_flight,
                )
    finally:
        stop_task.cancel()
        if not load_task.done():
            load_task.cancel()
        await service.aclose()
        await site.stop()
        await runner.cleanup()
        _release_device(service, code)
    log.info("worker stopped (exit %d)", code)
    return code


def _release_device(service: WorkerService, code: int) -> None:
    """Stop the device thread; a predict that still hangs must not keep the process alive."""
    busy = service.runner.busy
    service.runner.shutdown(wait=False)
    if busy and service.runner.thread_alive:
        # Interpreter exit would join the hung thread forever; the answer was given up on.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
