"""The Ray actor that runs one worker on its node: a remote handle on one server process.

Ray places the actor (``num_gpus`` each, on any node of the cluster) and sets
``CUDA_VISIBLE_DEVICES`` in the actor's process to the GPUs it was given; the worker the
actor starts inherits exactly that mask. The worker listens on the node's own address (the
one Ray reports for the node) on a free port, so the router, wherever ``gpufleet up``
runs, can reach it.

The worker dies with its actor: it gets ``PR_SET_PDEATHSIG`` = SIGKILL (Linux), so a
``kill -9`` of the actor, a node's raylet going down or the driver's exit all take the
worker along. A worker left behind would hold a GPU that Ray already hands to the actor's
replacement. When the actor dies, Ray restarts it (``max_restarts``) and the launcher
starts a fresh worker through it; when only the worker exits, the same actor starts it
again, on the same GPU.

This module runs on the cluster's nodes; it imports Ray only inside the actor, so it can
be imported (and unit-tested) where Ray is not installed. What it does on the node
besides (placeholders, ports, the death signal, work folders) is ``ray_node``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpufleet.fleet.ray_node import (
    NODE_PLACEHOLDERS,
    WORKDIR_PREFIX,
    death_signal_setter,
    fill_placeholders,
    pick_free_port,
    read_port_file,
    sweep_stale_workdirs,
)

#: Output of the worker kept in the actor for the driver's log file (oldest dropped past it).
_OUTPUT_BUFFER_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class RayWorkerSpec:
    """What one actor runs: a command template, filled in on the node it lands on."""

    #: Worker slot (0..N-1); stable across restarts.
    index: int
    #: argv with placeholders ``{python}`` ``{host}`` ``{port}`` ``{port_file}`` ``{gpu}``
    #: ``{index}`` ``{config}``, filled in on the node.
    argv: tuple[str, ...]
    #: The server writes its bound port to ``{port_file}`` (``gpufleet worker --port 0``);
    #: otherwise the actor picks a free port on its node and passes it as ``{port}``.
    port_from_file: bool = True
    #: How long the worker may take to write its port.
    startup_timeout_s: float = 600.0
    #: Text of the ``--config`` YAML file, written on the node (the driver's path may not
    #: exist there).
    config_text: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RayWorkerInfo:
    """Where a started worker lives: reported by the actor once the worker is ready."""

    index: int
    url: str
    node_ip: str
    node_id: str
    hostname: str
    port: int
    #: GPU ids Ray assigned to the actor (as strings), and the mask the worker saw.
    gpu_ids: tuple[str, ...]
    cuda_visible_devices: str | None
    pid: int
    actor_pid: int
    #: The command line as run on the node (placeholders filled).
    argv: tuple[str, ...] = ()

    @property
    def gpu(self) -> str:
        """The GPUs of this worker, as one label (``"0"``, ``"2,3"``, ``"-"`` for none)."""
        return ",".join(self.gpu_ids) or "-"


class OutputBuffer:
    """The worker's output, kept until the driver reads it; the oldest is dropped past a cap."""

    def __init__(self, limit: int = _OUTPUT_BUFFER_BYTES) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit
        self._closed = False
        self._changed = asyncio.Condition()

    async def put(self, chunk: bytes) -> None:
        """Add output; past the cap the oldest chunks go."""
        async with self._changed:
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size > self._limit and len(self._chunks) > 1:
                self._size -= len(self._chunks.popleft())
            self._changed.notify_all()

    async def close(self) -> None:
        """No more output will come (the worker exited)."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def take(self) -> bytes:
        """Everything buffered, waiting for some; ``b""`` once closed and empty."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._chunks) or self._closed)
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            return data


class WorkerActor:
    """One worker slot on one node; made a Ray actor by ``ray_launcher`` (``ray.remote``).

    The actor is a remote process handle: ``launch`` starts the worker (again, after it
    exited), ``wait``, ``send``, ``stop`` and ``kill`` act on it, ``output`` streams what it
    prints. It is an async actor, so ``wait`` can block while the others still answer.
    """

    def __init__(self, spec: RayWorkerSpec) -> None:
        self._spec = spec
        self._proc: asyncio.subprocess.Process | None = None
        self._info: RayWorkerInfo | None = None
        self._output = OutputBuffer()
        self._pump: asyncio.Task[None] | None = None
        self._launching = asyncio.Lock()
        # Port file and config of the worker; named after this process, so the next actor
        # on the node can remove what a killed one left.
        root = Path(tempfile.gettempdir())
        sweep_stale_workdirs(root)
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=root))

    async def launch(self) -> RayWorkerInfo:
        """Start the worker unless it runs; where it serves, once its port is known.

        Readiness (``ready_path`` answering 200) is the caller's to probe, as for a local
        worker.
        """
        async with self._launching:
            if self._proc is not None and self._proc.returncode is None and self._info:
                return self._info
            return await self._spawn()

    async def _spawn(self) -> RayWorkerInfo:
        ray: Any = importlib.import_module("ray")
        spec = self._spec
        host = ray.util.get_node_ip_address()
        gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
        self._workdir.mkdir(mode=0o700, exist_ok=True)  # gone after a stop
        port_file = self._workdir / "port"
        port_file.unlink(missing_ok=True)
        port = 0 if spec.port_from_file else pick_free_port(host)
        config = ""
        if spec.config_text is not None:
            config_path = self._workdir / "gpufleet.yaml"
            config_path.write_text(spec.config_text, encoding="utf-8")
            config = str(config_path)
        values = {
            "python": sys.executable,
            "host": host,
            "port": str(port),
            "port_file": str(port_file),
            "gpu": ",".join(gpu_ids),
            "index": str(spec.index),
            "config": config,
        }
        env = {**os.environ, **spec.env}
        self._output = OutputBuffer()
        argv = fill_placeholders(spec.argv, values)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            preexec_fn=death_signal_setter(),
        )
        self._proc, self._info = proc, None
        self._pump = asyncio.create_task(self._copy_output(proc, self._output))
        if spec.port_from_file:
            try:
                port = await read_port_file(port_file, proc, spec.startup_timeout_s)
            except TimeoutError:
                await self._kill(proc)
                raise
        self._info = RayWorkerInfo(
            index=spec.index,
            url=f"http://{_url_host(host)}:{port}",
            node_ip=host,
            node_id=str(ray.get_runtime_context().get_node_id()),
            hostname=socket.gethostname(),
            port=port,
            gpu_ids=gpu_ids,
            cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
            pid=proc.pid,
            actor_pid=os.getpid(),
            argv=tuple(argv),
        )
        return self._info

    @staticmethod
    async def _copy_output(proc: asyncio.subprocess.Process, out: OutputBuffer) -> None:
        try:
            if proc.stdout is not None:
                while chunk := await proc.stdout.read(_CHUNK):
                    await out.put(chunk)
        finally:
            await out.close()

    async def output(self) -> AsyncIterator[bytes]:
        """Stream the current worker's output until it exits (a Ray streaming generator)."""
        out = self._output
        while chunk := await out.take():
            yield chunk

    async def info(self) -> RayWorkerInfo | None:
        """Where the worker serves, or None before its port is known."""
        return self._info

    async def wait(self) -> int:
        """Block until the worker exits; its exit status."""
        if self._proc is None:
            raise RuntimeError("worker was never launched")
        return await self._proc.wait()

    async def send(self, sig: int) -> None:
        """Deliver ``sig`` to the worker (SIGTERM drains a gpufleet worker)."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def stop(self, grace_s: float, kill_after_s: float = 0.0) -> int | None:
        """SIGTERM, then SIGKILL past ``grace_s + kill_after_s``; the exit status."""
        proc = self._proc
        if proc is None:
            return None
        await self.send(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s + kill_after_s):
                return await proc.wait()
        except TimeoutError:
            return await self._kill(proc)
        finally:
            # The fleet is stopping: nothing is left to start here.
            await asyncio.to_thread(shutil.rmtree, self._workdir, True)

    async def kill(self) -> int | None:
        """SIGKILL the worker; its exit status."""
        return None if self._proc is None else await self._kill(self._proc)

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> int:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        return await proc.wait()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = [
    "NODE_PLACEHOLDERS",
    "OutputBuffer",
    "RayWorkerInfo",
    "RayWorkerSpec",
    "WorkerActor",
    "death_signal_setter",
    "fill_placeholders",
    "pick_free_port",
    "read_port_file",
    "sweep_stale_workdirs",
]
