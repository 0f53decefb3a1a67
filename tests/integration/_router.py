"""Helpers for the router's integration tests: JSON over HTTP, waits, a worker on a set port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet.testing import ServerProcess
from gpufleet.testing._process import wait_healthy

TOKEN = "s3cret-admin-token"


async def get_json(url: str, *, headers: dict[str, str] | None = None) -> Any:
    """GET ``url`` and decode its JSON body (any status)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(url, headers=headers) as resp,
    ):
        return await resp.json(content_type=None)


async def worker_entry(router_url: str, upstream_url: str) -> dict[str, Any]:
    """The router's ``/stats`` entry of the upstream at ``upstream_url``."""
    stats = await get_json(router_url + "/stats")
    for entry in stats["workers"]:
        if entry["url"] == upstream_url:
            return dict(entry)
    raise AssertionError(f"{upstream_url} not in {stats['workers']}")


async def wait_for(
    check: Callable[[], Any], *, within: float, interval: float = 0.05, what: str = ""
) -> float:
    """Await ``check()`` (a coroutine function) until truthy; return the seconds it took."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"not true after {within}s: {what}")
        await asyncio.sleep(interval)


async def wait_state(router_url: str, upstream_url: str, state: str, within: float) -> float:
    """Wait until the router shows ``upstream_url`` in ``state``; seconds it took."""

    async def check() -> bool:
        return bool((await worker_entry(router_url, upstream_url))["state"] == state)

    return await wait_for(check, within=within, what=f"{upstream_url} {state}")


@contextlib.contextmanager
def worker_on_port(port: int, *args: str, timeout: float = 60.0) -> Iterator[ServerProcess]:
    """Run ``gpufleet worker ARGS`` on 127.0.0.1:``port`` (a restart on the same port)."""
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-test-"))
    log_path = workdir / "process.log"
    cmd = [sys.executable, "-m", "gpufleet", "worker", *args]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", port, log_path, workdir)
    try:
        wait_healthy(server.url, timeout=timeout, proc=proc)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        server.remove_workdir()  # as run_server does
