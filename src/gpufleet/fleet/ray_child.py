"""A worker placed by Ray, seen from the machine that runs ``gpufleet up``.

``RayChild`` is the supervisor's handle on a worker running under a Ray actor: it waits
on the actor, stops and kills the worker through it, and copies its output into the same
per-worker log file a local worker writes. ``placed_spec`` is the worker's spec as Ray
placed it (the node's host and port, its GPUs), with ``worker_labels`` saying where.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from typing import Any
from urllib.parse import urlsplit

from gpufleet.fleet.logfile import RotatingLog
from gpufleet.fleet.process import ChildSpec
from gpufleet.fleet.ray_actor import RayWorkerInfo

log = logging.getLogger("gpufleet.fleet")

#: ``labels["launcher"]`` of a spec that runs as a Ray actor (others run here).
RAY_LABEL = "ray"
#: Exit status reported when the actor itself died (node lost, process killed).
ACTOR_LOST = -int(signal.SIGKILL)


def worker_labels(info: RayWorkerInfo) -> dict[str, str]:
    """Where a Ray worker runs, for status, logs and the router's /stats.

    ``placement`` (``NODE/gpuN``) is what ``gpufleet status`` shows as the device.
    """
    where = f"gpu{info.gpu}" if info.gpu_ids else "cpu"
    return {
        "launcher": RAY_LABEL,
        "index": str(info.index),
        "node": info.node_ip,
        "hostname": info.hostname,
        "node_id": info.node_id,
        "gpu": info.gpu,
        "placement": f"{info.node_ip}/{where}",
        "actor_pid": str(info.actor_pid),
    }


def placed_spec(spec: ChildSpec, info: RayWorkerInfo) -> ChildSpec:
    """``spec`` as Ray placed it: the node's host and port, its GPUs, its labels.

    ``argv`` keeps its placeholders: the actor fills them on its node at each start.
    """
    env = dict(spec.env)
    if info.cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = info.cuda_visible_devices
    parts = urlsplit(info.url)
    return dataclasses.replace(
        spec,
        host=parts.hostname or info.node_ip,
        port=info.port,
        env=env,
        labels={**spec.labels, **worker_labels(info)},
    )


class RayChild:
    """A worker running under a Ray actor (the ``ChildHandle`` of :class:`RayLauncher`)."""

    def __init__(self, name: str, actor: Any, info: RayWorkerInfo, spec: ChildSpec) -> None:
        self.name = name
        self.info = info
        self.spec = spec
        self._actor = actor
        self._code: int | None = None
        self._waited: asyncio.Future[int] | None = None
        self._log = RotatingLog(spec.log_path, spec.log_max_bytes, spec.log_backups)
        self._pump = asyncio.ensure_future(self._copy_output())

    @property
    def pid(self) -> int:
        """The worker's pid on its node."""
        return self.info.pid

    @property
    def url(self) -> str:
        """Where the worker serves: the node's address and the port it bound."""
        return self.info.url

    @property
    def returncode(self) -> int | None:
        """Exit status once the worker (or its actor) is gone, else None."""
        return self._code

    async def _copy_output(self) -> None:
        # The actor buffers the worker's output; it lands in the same per-worker log file
        # a local worker writes, here on the machine that runs `up`.
        try:
            async for ref in self._actor.output.remote():
                self._log.write(await ref)
        except Exception as exc:  # a dead actor ends the stream with Ray's own errors
            log.debug("output of %s ended: %r", self.name, exc)
        finally:
            self._log.close()

    async def wait(self) -> int:
        """Wait until the worker exits, or its actor dies; its exit status."""
        if self._waited is None:
            self._waited = asyncio.ensure_future(self._wait_remote())
        return await asyncio.shield(self._waited)

    async def _wait_remote(self) -> int:
        try:
            code = int(await self._actor.wait.remote())
        except Exception as exc:  # ray.exceptions.RayActorError and kin
            log.warning(
                "%s: its Ray actor died (%s): Ray restarts it and the worker starts again",
                self.name,
                type(exc).__name__,
            )
            code = ACTOR_LOST
        self._code = code
        return code

    def send(self, sig: int) -> None:
        """Deliver ``sig`` to the worker through its actor."""
        if self._code is None:
            self._actor.send.remote(int(sig))

    async def stop(self, grace_s: float, kill_after_s: float = 0.0) -> int:
        """SIGTERM (the worker drains), SIGKILL past the budget; its exit status."""
        if self._code is None:
            with contextlib.suppress(Exception):  # the actor may be gone already
                await self._actor.stop.remote(grace_s, kill_after_s)
        return await self.wait()

    async def kill(self) -> int:
        """SIGKILL the worker."""
        if self._code is None:
            with contextlib.suppress(Exception):
                await self._actor.kill.remote()
        return await self.wait()

    async def aclose(self) -> None:
        """Make sure the worker is gone and its log is flushed (the actor stays)."""
        if self._code is None:
            await self.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.shield(self._pump)
        if not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


__all__ = ["ACTOR_LOST", "RAY_LABEL", "RayChild", "placed_spec", "worker_labels"]
