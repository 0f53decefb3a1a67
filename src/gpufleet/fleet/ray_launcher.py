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
The handle on one such worker is ``ray_child.RayChild``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from gpufleet.fleet.launcher import ChildHandle, Launcher, LocalLauncher
from gpufleet.fleet.process import ChildSpec
from gpufleet.fleet.ray_actor import RayWorkerInfo, RayWorkerSpec, WorkerActor
from gpufleet.fleet.ray_child import ACTOR_LOST, RAY_LABEL, RayChild, placed_spec, worker_labels
from gpufleet.fleet.ray_cluster import RayOptions

log = logging.getLogger("gpufleet.fleet")

#: How often to say that a worker still waits for Ray to place it.
_PLACEMENT_NOTICE_S = 30.0
#: How often to ask a restarting actor again.
_UNAVAILABLE_RETRY_S = 1.0


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
