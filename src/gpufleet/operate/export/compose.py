"""``gpufleet export compose``: one service per GPU running ``gpufleet worker``, and the router.

Each worker service reserves exactly its GPU (``device_ids``). The NVIDIA runtime then
shows the container that one device, numbered 0, so ``CUDA_VISIBLE_DEVICES`` inside is
``0``: the physical index would hide the only GPU there is. Docker restarts a worker that
exits; the router probes and ejects, as it does behind ``up``. Only the router's port is
published, on the fleet's ``host`` (127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

import math
from typing import Any

from gpufleet.operate.export._yaml import dump_all
from gpufleet.operate.export.layout import ExportLayout, PoolLayout, Slot
from gpufleet.operate.export.options import ExportOptions, header

#: Where the ``--config`` file is mounted inside every container.
CONTAINER_CONFIG = "/etc/gpufleet/fleet.yaml"
#: Containers listen on every address of their own network namespace.
CONTAINER_HOST = "0.0.0.0"


def service_name(pool: PoolLayout, slot: Slot) -> str:
    """``worker-gpu0`` for the one pool, ``fast-gpu2`` for a named pool."""
    prefix = "worker" if pool.name == "default" else pool.name
    return f"{prefix}-{slot.device}".lower()


def _healthcheck(port: int, path: str, start_s: float) -> dict[str, Any]:
    probe = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{port}{path}', timeout=5)"
    return {
        "test": ["CMD", "python", "-c", probe],
        "interval": "10s",
        "timeout": "5s",
        "retries": 3,
        "start_period": f"{math.ceil(start_s)}s",
    }


def render_compose(layout: ExportLayout, opts: ExportOptions) -> str:
    """The ``compose.yaml`` text."""
    fleet = layout.fleet
    volumes = [f"{opts.config_path}:{CONTAINER_CONFIG}:ro"] if opts.config_path else []
    config_path = CONTAINER_CONFIG if opts.config_path else None
    grace = f"{math.ceil(fleet.drain_timeout_s + fleet.kill_timeout_s)}s"
    services: dict[str, Any] = {}
    urls: list[tuple[str, str]] = []
    for pool in layout.pools:
        for slot in pool.slots:
            name = service_name(pool, slot)
            argv = pool.worker_argv(
                slot,
                exe=opts.exe,
                host=CONTAINER_HOST,
                config_path=config_path,
                gpu_label=None if slot.gpu is None else "0",
            )
            env = {"PYTHONUNBUFFERED": "1"}
            service: dict[str, Any] = {"image": opts.image, "command": list(argv)}
            if slot.gpu is None:
                env["CUDA_VISIBLE_DEVICES"] = ""
            else:
                env["CUDA_VISIBLE_DEVICES"] = "0"
                env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
                service["deploy"] = {
                    "resources": {
                        "reservations": {
                            "devices": [
                                {
                                    "driver": "nvidia",
                                    "device_ids": [slot.gpu.visible_devices],
                                    "capabilities": ["gpu"],
                                }
                            ]
                        }
                    }
                }
            service["environment"] = env
            if volumes:
                service["volumes"] = list(volumes)
            service["healthcheck"] = _healthcheck(
                slot.port, fleet.ready_path, fleet.startup_timeout_s
            )
            service["restart"] = "unless-stopped"
            service["stop_signal"] = "SIGTERM"
            service["stop_grace_period"] = grace
            services[name] = service
            urls.append((pool.router_pool, f"http://{name}:{slot.port}"))
    router_argv = layout.router_argv(
        exe=opts.exe, host=CONTAINER_HOST, urls=urls, config_path=config_path
    )
    router: dict[str, Any] = {
        "image": opts.image,
        "command": list(router_argv),
        "environment": {"PYTHONUNBUFFERED": "1"},
        "ports": [f"{_published(fleet.host)}:{layout.port}:{layout.port}"],
        "depends_on": [name for name in services],
        "healthcheck": _healthcheck(layout.port, "/health", 30),
        "restart": "unless-stopped",
        "stop_signal": "SIGTERM",
        "stop_grace_period": f"{math.ceil(layout.router.drain_timeout_s + 10)}s",
    }
    if volumes:
        router["volumes"] = list(volumes)
    services["router"] = router
    doc = {"name": opts.name, "services": services}
    lines = header(layout, opts)
    lines += [f"# Run: docker compose -f <this file> up -d; the endpoint is {fleet.host}:"
              f"{layout.port}.", ""]  # fmt: skip
    return "\n".join(lines) + dump_all([doc])


def _published(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["CONTAINER_CONFIG", "render_compose", "service_name"]
