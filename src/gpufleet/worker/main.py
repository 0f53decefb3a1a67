"""The worker process: listen, write the port file, load the model, serve, drain on SIGTERM.

Order matters for the layers above: the socket listens (and ``--port-file`` is written)
before the model loads, so ``/health`` answers 503 "loading" meanwhile; the first SIGTERM
turns health 503 before anything else, finishes in-flight work (bounded by
``drain_timeout_s``) and exits 0; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from gpufleet._listener import Listener
from gpufleet._server import ServerLog
from gpufleet.config.worker import WorkerConfig
from gpufleet.models import check_model_spec
from gpufleet.worker.app import build_app
from gpufleet.worker.service import WorkerService

log = logging.getLogger("gpufleet.worker")

#: Exit status when the model fails to load (a supervisor restarts with back-off).
EXIT_LOAD_FAILED = 1


async def serve(cfg: WorkerConfig) -> int:
    """Run one worker until it is told to stop; return the process exit status.

    Raises:
        ConfigError: the model cannot be imported, or the port cannot be had (before
            anything listens: one line at the command line, exit 2).
    """
    check_model_spec(cfg.model)
    service = WorkerService(cfg)
    listener = Listener(
        build_app(service),
        host=cfg.host,
        port=cfg.port,
        logger=ServerLog("gpufleet.worker.http", on_bad=service.metrics.bad_requests.inc),
        # The drain below waits for in-flight work; leaving then gives handlers 1 s more.
        shutdown_timeout_s=1.0,
    )
    code = 0
    try:
        async with listener:
            try:
                code = await _run(cfg, service, listener)
            finally:
                await service.aclose()  # before the listener closes: queued items fail now
        _release_device(service, code)
    finally:
        await service.aclose()  # a port that could not be had: nothing was loaded
    log.info("worker stopped (exit %d)", code)
    return code


async def _run(cfg: WorkerConfig, service: WorkerService, listener: Listener) -> int:
    """Load the model while serving 503 "loading"; drain on the first signal."""
    if cfg.port_file:
        await listener.write_port_file(cfg.port_file)
    log.info(
        "worker listening on http://%s:%d (model %s loading)", cfg.host, listener.port, cfg.model
    )

    listener.handle_signals(log, service.stop_taking_work)
    load_task = asyncio.create_task(service.load(), name="load-model")
    stop_task = asyncio.create_task(listener.stop.wait(), name="stop")
    try:
        await asyncio.wait({load_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if load_task.done() and load_task.exception() is not None:
            log.error("model %s failed to load: %s", cfg.model, load_task.exception())
            return EXIT_LOAD_FAILED
        await stop_task
        if not await service.drain(cfg.drain_timeout_s):
            log.warning(
                "drain timeout (%.1fs): %d request(s) still in flight",
                cfg.drain_timeout_s,
                service.counters.in_flight,
            )
        return 0
    finally:
        stop_task.cancel()
        if not load_task.done():
            load_task.cancel()


def _release_device(service: WorkerService, code: int) -> None:
    """Stop the device thread; a predict that still hangs must not keep the process alive."""
    busy = service.runner.busy
    service.runner.shutdown(wait=False)
    if busy and service.runner.thread_alive:
        # Interpreter exit would join the hung thread forever; the answer was given up on.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
