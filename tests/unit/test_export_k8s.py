"""`gpufleet export k8s`: a workload per GPU pool, probes on /health, Services, the router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpufleet.operate.export import ExportOptions, render
from tests.unit._export import POOLS_YAML, layout_of, write_config


def _docs(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(by_key) == len(docs), "two objects with one kind and name"
    return by_key


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def test_pools_router_and_config_map(tmp_path: Path) -> None:
    config = write_config(tmp_path, POOLS_YAML)
    opts = ExportOptions(
        config_path=str(config), config_text=POOLS_YAML, namespace="ml", image="reg/gf:1"
    )
    layout = layout_of({"drain_timeout_s": 20}, config=config)
    docs = _docs(render("k8s", layout, opts))
    assert set(docs) == {
        ("ConfigMap", "gpufleet-config"),
        ("StatefulSet", "gpufleet-fast"),
        ("Service", "gpufleet-fast"),
        ("StatefulSet", "gpufleet-quality"),
        ("Service", "gpufleet-quality"),
        ("Deployment", "gpufleet-router"),
        ("Service", "gpufleet-router"),
    }
    assert all(d["metadata"]["namespace"] == "ml" for d in docs.values())
    assert yaml.safe_load(docs["ConfigMap", "gpufleet-config"]["data"]["fleet.yaml"]) == (
        yaml.safe_load(POOLS_YAML)
    )
    for pool, port, model in (("fast", 8001, "synthetic"), ("quality", 8003, "minilm")):
        workload = docs["StatefulSet", f"gpufleet-{pool}"]
        spec = workload["spec"]
        assert spec["replicas"] == 2
        assert spec["serviceName"] == f"gpufleet-{pool}"
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"] == labels
        c = _container(workload)
        assert c["image"] == "reg/gf:1"
        assert c["resources"]["limits"] == {"nvidia.com/gpu": 1}
        assert c["command"][:4] == ["gpufleet", "worker", "--model", model]
        assert c["command"][c["command"].index("--port") + 1] == str(port)
        assert c["command"][c["command"].index("--config") + 1] == "/etc/gpufleet/fleet.yaml"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": port}, probe
        # The model may take startup_timeout_s (600 s) to load before liveness counts.
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 20 + 10
        service = docs["Service", f"gpufleet-{pool}"]["spec"]
        assert service["selector"] == labels
        assert service["ports"][0]["port"] == port
        assert service["clusterIP"] == "None"
    router = docs["Deployment", "gpufleet-router"]
    cmd = _container(router)["command"]
    assert cmd[:2] == ["gpufleet", "router"]
    assert [cmd[i + 1] for i, w in enumerate(cmd) if w == "--worker"] == [
        "fast@http://gpufleet-fast-0.gpufleet-fast:8001",
        "fast@http://gpufleet-fast-1.gpufleet-fast:8001",
        "http://gpufleet-quality-0.gpufleet-quality:8003",
        "http://gpufleet-quality-1.gpufleet-quality:8003",
    ]
    assert cmd[cmd.index("--route") + 1] == "/fast=fast"
    assert _container(router)["readinessProbe"]["httpGet"]["path"] == "/health"
    router_service = docs["Service", "gpufleet-router"]["spec"]
    assert router_service["selector"] == router["spec"]["template"]["metadata"]["labels"]
    assert router_service["ports"][0]["port"] == 8000


def test_cpu_pool_has_no_gpu_limit_and_names_are_dns_labels() -> None:
    docs = _docs(render("k8s", layout_of({"cpu_workers": 3}), ExportOptions(name="My_Fleet")))
    workload = docs["StatefulSet", "my-fleet-default"]
    assert workload["spec"]["replicas"] == 3
    c = _container(workload)
    assert c["resources"] == {}
    assert {"name": "CUDA_VISIBLE_DEVICES", "value": ""} in c["env"]
    assert "ConfigMap" not in {kind for kind, _ in docs}
    assert "volumeMounts" not in c
