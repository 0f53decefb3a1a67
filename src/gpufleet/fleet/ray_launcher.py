"""Workers on a Ray cluster: one actor per worker slot, placed by Ray, kept by the supervisor.

``gpufleet up --ray [ADDRESS]`` runs the same supervisor and router as a local fleet;
only the launcher differs. :class:`RayLauncher` starts each worker spec through a
:class:`~gpufleet.fleet.ray_actor.WorkerActor` that asks Ray for ``gpus_per_worker`` GPUs,
so Ray chooses the node and sets ``CUDA_VISIBLE_DEVICES``; the router (and anything else)
still runs here, as local processes.

Deaths are handled at two levels. Ray restarts a dead actor (``max_restarts``; -1 means
forever) wherever the cluster has room, e.g. on another node after a node is lost. The
supervisor sees the worker's handle end, backs off as for a local worker, and starts it
again through the same actor, which then serves at a new address: the handle's ``spec``
carries the new host and port, and the router's pool follows through the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gpufleet.fleet.launcher import ChildHandle, Launcher, LocalLauncher
from gpufleet.fleet.logfile import RotatingLog
from gpufleet.fleet.process import ChildSpec
from gpufleet.fleet.ray_actor import RayWorkerInfo, RayWorkerSpec, WorkerActor
from gpufleet.fleet.ray_cluster import RayOptions

log = logging.getLogger("gpufleet.fleet")

#: ``labels["launcher"]`` of a spec that runs as a Ray actor (others run here).
RAY_LABEL = "ray"
#: Exit status reported when the actor itself died (node lost, process killed).
ACTOR_LOST = -int(signal.SIGKILL)
#: How often to say that a worker still waits for Ray to place it.
_PLACEMENT_NOTICE_S = 30.0
#: How often to ask a restarting actor again.
_UNAVAILABLE_RETRY_S = 1.0


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


class RayLauncher:
    """Starts specs labelled ``launcher=ray`` as Ray actors, all others as local processes."""

    name = "ray"

    def __init__(
        self,
        ray: Any,
        options: RayOptions,
        *,
        config_text: str | None = None,
        local: Launcher | None = None,
    ) -> None:
        self._ray = ray
        self._options = options
        self._config_text = config_text
        self._local = local or LocalLauncher()
        self._actors: dict[str, Any] = {}
        #: The spec as planned, by name: a restart gets the placed one, whose env holds
        #: the old node's CUDA_VISIBLE_DEVICES (a new actor must get Ray's, not that).
        self._planned: dict[str, ChildSpec] = {}
        self._made: dict[str, int] = {}

    def _worker_spec(self, spec: ChildSpec) -> RayWorkerSpec:
        return RayWorkerSpec(
            index=int(spec.labels.get("index", "0")),
            argv=spec.argv,
            port_from_file=any("{port_file}" in a for a in spec.argv),
            startup_timeout_s=self._options.startup_timeout_s,
            config_text=self._config_text,
            env=dict(spec.env),
        )

    def _new_actor(self, spec: ChildSpec) -> Any:
        opts = self._options
        # A replacement gets a name of its own: the dead one's may not be free yet.
        self._made[spec.name] = made = self._made.get(spec.name, 0) + 1
        remote = self._ray.remote(WorkerActor).options(
            name=f"{opts.run_id}-{spec.name}-{made}",
            namespace=opts.namespace,
            num_gpus=opts.gpus_per_worker,
            num_cpus=opts.cpus_per_worker,
            max_restarts=opts.max_restarts,
            # A call in flight when the actor dies fails; the supervisor starts again.
            max_task_retries=0,
            scheduling_strategy=opts.scheduling_strategy,
            max_concurrency=16,
        )
        actor = remote.remote(self._worker_spec(spec))
        self._actors[spec.name] = actor
        return actor

    async def start(self, spec: ChildSpec) -> ChildHandle:
        """Start ``spec`` (through its actor when it is a Ray worker); its handle.

        Raises:
            OSError: the worker could not be started on its node.
        """
        if spec.labels.get("launcher") != RAY_LABEL:
            return await self._local.start(spec)
        spec = self._planned.setdefault(spec.name, spec)
        try:
            actor, info = await self._launch_or_replace(spec)
        except self._ray.exceptions.RayActorError as exc:
            raise OSError(f"the Ray actor of {spec.name} died while starting it: {exc}") from exc
        except (self._ray.exceptions.RayError, RuntimeError, TimeoutError) as exc:
            # RayError: what the actor raised (the worker exited before binding, …).
            raise OSError(str(exc)) from exc
        placed = placed_spec(spec, info)
        log.info(
            "%s placed by Ray on %s (%s), GPU %s, pid %d: %s",
            spec.name,
            info.hostname,
            info.node_ip,
            info.gpu,
            info.pid,
            " ".join(info.argv),
        )
        return RayChild(spec.name, actor, info, placed)

    async def _launch_or_replace(self, spec: ChildSpec) -> tuple[Any, RayWorkerInfo]:
        actor = self._actors.get(spec.name) or self._new_actor(spec)
        try:
            return actor, await self._launch(spec.name, actor)
        except self._ray.exceptions.ActorDiedError:
            # Out of restarts (or killed for good): a new actor, placed anew by Ray.
            log.warning("%s: its Ray actor is gone for good; creating a new one", spec.name)
            with contextlib.suppress(Exception):  # make sure it holds no GPU any more
                self._ray.kill(actor, no_restart=True)
            actor = self._new_actor(spec)
            return actor, await self._launch(spec.name, actor)

    async def _launch(self, name: str, actor: Any) -> RayWorkerInfo:
        # A restarting actor (its node was lost, say) refuses calls with
        # ActorUnavailableError until Ray has placed it again, which needs a node with
        # room: ask again until then. Ray offers nothing to wait on, hence the poll.
        unavailable = getattr(self._ray.exceptions, "ActorUnavailableError", ())
        waited_since = time.monotonic()
        notice_at = waited_since + _PLACEMENT_NOTICE_S
        while True:
            pending = asyncio.ensure_future(self._await_ref(actor.launch.remote()))
            try:
                while True:
                    timeout = max(0.0, notice_at - time.monotonic())
                    done, _ = await asyncio.wait({pending}, timeout=timeout)
                    if done:
                        return pending.result()
                    await self._placement_notice(name, waited_since)
                    notice_at = time.monotonic() + _PLACEMENT_NOTICE_S
            except unavailable:
                if time.monotonic() >= notice_at:
                    await self._placement_notice(name, waited_since)
                    notice_at = time.monotonic() + _PLACEMENT_NOTICE_S
                await asyncio.sleep(_UNAVAILABLE_RETRY_S)
            finally:
                pending.cancel()

    async def _placement_notice(self, name: str, since: float) -> None:
        log.warning(
            "%s: waiting %.0fs for Ray to place and start it (needs %g GPU; free now: %s)",
            name,
            time.monotonic() - since,
            self._options.gpus_per_worker,
            await asyncio.to_thread(self._free_gpus),
        )

    @staticmethod
    async def _await_ref(ref: Any) -> RayWorkerInfo:
        info: RayWorkerInfo = await ref
        return info

    def _free_gpus(self) -> str:
        try:
            return f"{self._ray.available_resources().get('GPU', 0):g}"
        except Exception:  # informational only
            return "unknown"

    async def aclose(self) -> None:
        """End every actor (their workers die with them); Ray frees their GPUs."""
        for actor in self._actors.values():
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
        self._actors.clear()

    def actors(self) -> Mapping[str, Any]:
        """The actor of each worker spec, by spec name (for tests and tools)."""
        return dict(self._actors)


__all__ = ["ACTOR_LOST", "RAY_LABEL", "RayChild", "RayLauncher", "placed_spec", "worker_labels"]
