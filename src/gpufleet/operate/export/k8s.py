"""``gpufleet export k8s``: manifests for one workload per GPU pool, and the router in front.

Each pool is a StatefulSet (one pod per GPU, ``nvidia.com/gpu: 1`` each) with a headless
Service, rather than a Deployment behind a virtual IP: the router does the balancing
(shortest expected wait, a cap per worker, safe retries), so it must see every worker as
its own upstream. A StatefulSet gives each pod a stable DNS name
(``gpufleet-default-0.gpufleet-default``) that the router's ``--worker`` flags can name;
pods are started in parallel, not one by one. The headless Service publishes pods that
are not ready yet, so the router can resolve a loading worker and take it in once its
own probe passes. The router itself is a Deployment with a Service: the one endpoint.

Probes follow the fleet's settings: a startup probe allows ``startup_timeout_s`` for the
model to load, readiness and liveness probe the worker's ``ready_path`` every
``liveness_interval_s``, and a pod gets ``drain_timeout_s + kill_timeout_s`` to drain.
"""

from __future__ import annotations

import math
import re
from typing import Any

from gpufleet.operate.export._yaml import dump_all
from gpufleet.operate.export.layout import ExportLayout, PoolLayout
from gpufleet.operate.export.options import ExportOptions, header

#: Where the ConfigMap holding the ``--config`` file is mounted.
CONFIG_DIR = "/etc/gpufleet"
CONFIG_FILE = "fleet.yaml"
GPU_RESOURCE = "nvidia.com/gpu"
#: Seconds between startup probes.
STARTUP_PERIOD_S = 10


def k8s_name(*parts: str) -> str:
    """A DNS-1123 label from ``parts`` (lower case, ``-`` between, at most 63 characters)."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return text[:63].rstrip("-") or "gpufleet"


def _meta(name: str, opts: ExportOptions, labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    meta["labels"] = labels
    return meta


def _labels(opts: ExportOptions, component: str, pool: str | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": k8s_name(opts.name),
        "app.kubernetes.io/component": component,
    }
    if pool is not None:
        labels["gpufleet.io/pool"] = k8s_name(pool)
    return labels


def _http_probe(path: str, port: int, **extra: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, **extra}


def replicas(pool: PoolLayout) -> int:
    """Pods of a pool: one per GPU (Kubernetes hands out whole GPUs), else its CPU workers."""
    return len(pool.gpus) if pool.gpus else len(pool.slots)


def _config_volume(opts: ExportOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not opts.config_text:
        return [], []
    volumes = [{"name": "config", "configMap": {"name": k8s_name(opts.name, "config")}}]
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    return volumes, mounts


def _pool_docs(layout: ExportLayout, pool: PoolLayout, opts: ExportOptions) -> list[Any]:
    fleet = layout.fleet
    name = k8s_name(opts.name, pool.name)
    labels = _labels(opts, "worker", pool.name)
    slot = pool.slots[0]
    port = slot.port
    config_path = f"{CONFIG_DIR}/{CONFIG_FILE}" if opts.config_text else None
    argv = pool.worker_argv(
        slot,
        exe=opts.exe,
        host="0.0.0.0",
        config_path=config_path,
        gpu_label=None if slot.gpu is None else "0",
    )
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    resources: dict[str, Any] = {}
    if pool.gpus:
        # The device plugin shows the container its one GPU (as device 0).
        resources = {"limits": {GPU_RESOURCE: 1}}
    else:
        env.append({"name": "CUDA_VISIBLE_DEVICES", "value": ""})
    volumes, mounts = _config_volume(opts)
    container: dict[str, Any] = {
        "name": "worker",
        "image": opts.image,
        "command": list(argv),
        "ports": [{"name": "http", "containerPort": port}],
        "env": env,
        "resources": resources,
        "startupProbe": _http_probe(
            fleet.ready_path,
            port,
            periodSeconds=STARTUP_PERIOD_S,
            failureThreshold=max(1, math.ceil(fleet.startup_timeout_s / STARTUP_PERIOD_S)),
        ),
        "readinessProbe": _http_probe(
            fleet.ready_path,
            port,
            periodSeconds=max(1, math.ceil(fleet.liveness_interval_s)),
            timeoutSeconds=max(1, math.ceil(fleet.liveness_timeout_s)),
            failureThreshold=1,
        ),
        "livenessProbe": _http_probe(
            fleet.ready_path,
            port,
            periodSeconds=max(1, math.ceil(fleet.liveness_interval_s)),
            timeoutSeconds=max(1, math.ceil(fleet.liveness_timeout_s)),
            failureThreshold=fleet.liveness_failures,
        ),
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": math.ceil(fleet.drain_timeout_s + fleet.kill_timeout_s),
        "containers": [container],
    }
    if volumes:
        pod_spec["volumes"] = volumes
    workload = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, opts, labels),
        "spec": {
            "serviceName": name,
            "replicas": replicas(pool),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, opts, labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"name": "http", "port": port, "targetPort": port}],
        },
    }
    return [workload, service]


def worker_urls(layout: ExportLayout, opts: ExportOptions) -> list[tuple[str, str]]:
    """``(router pool, URL)`` of every worker pod, by its StatefulSet DNS name."""
    urls = []
    for pool in layout.pools:
        if not pool.slots:
            continue
        name = k8s_name(opts.name, pool.name)
        port = pool.slots[0].port
        for i in range(replicas(pool)):
            urls.append((pool.router_pool, f"http://{name}-{i}.{name}:{port}"))
    return urls


def _router_docs(layout: ExportLayout, opts: ExportOptions) -> list[Any]:
    name = k8s_name(opts.name, "router")
    labels = _labels(opts, "router")
    config_path = f"{CONFIG_DIR}/{CONFIG_FILE}" if opts.config_text else None
    argv = layout.router_argv(
        exe=opts.exe, host="0.0.0.0", urls=worker_urls(layout, opts), config_path=config_path
    )
    volumes, mounts = _config_volume(opts)
    port = layout.port
    container: dict[str, Any] = {
        "name": "router",
        "image": opts.image,
        "command": list(argv),
        "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        # /health is 503 while no worker is ready: that keeps traffic away, and must not
        # restart the router, so liveness only asks whether it listens.
        "readinessProbe": _http_probe("/health", port, periodSeconds=2, failureThreshold=1),
        "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 10},
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": math.ceil(layout.router.drain_timeout_s + 10),
        "containers": [container],
    }
    if volumes:
        pod_spec["volumes"] = volumes
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, opts, labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, opts, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": labels,
            "ports": [{"name": "http", "port": port, "targetPort": port}],
        },
    }
    return [deployment, service]


def render_k8s(layout: ExportLayout, opts: ExportOptions) -> str:
    """Every manifest, as one multi-document YAML text (``kubectl apply -f``)."""
    docs: list[Any] = []
    if opts.config_text:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(k8s_name(opts.name, "config"), opts, _labels(opts, "config")),
                "data": {CONFIG_FILE: opts.config_text},
            }
        )
    for pool in layout.pools:
        if pool.slots:
            docs += _pool_docs(layout, pool, opts)
    docs += _router_docs(layout, opts)
    lines = header(layout, opts)
    lines.append(f"# Apply: kubectl apply -f <this file>; the endpoint is the Service "
                 f"{k8s_name(opts.name, 'router')}:{layout.port}.")  # fmt: skip
    if any(p.config.workers_per_gpu and p.config.workers_per_gpu > 1 for p in layout.pools):
        lines.append("# workers_per_gpu > 1 does not apply: Kubernetes gives each pod a whole GPU.")
    body = dump_all(docs)
    return "\n".join(lines) + "\n---\n" + body


__all__ = ["GPU_RESOURCE", "k8s_name", "render_k8s", "replicas", "worker_urls"]
