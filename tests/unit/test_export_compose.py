"""`gpufleet export compose`: one service per GPU running `gpufleet worker`, and the router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpufleet.operate.export import ExportOptions, render
from tests.unit._export import POOLS_YAML, layout_of, write_config


def _compose(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def test_one_service_per_gpu_pinned_by_reservation(tmp_path: Path) -> None:
    config = write_config(tmp_path, POOLS_YAML)
    opts = ExportOptions(config_path=str(config), image="registry/gpufleet:1.0")
    doc = _compose(render("compose", layout_of(config=config), opts))
    services = doc["services"]
    workers = {k: v for k, v in services.items() if k != "router"}
    assert list(workers) == ["fast-gpu0", "fast-gpu1", "quality-gpu2", "quality-gpu3"]
    for (name, service), gpu, port in zip(
        workers.items(), ["0", "1", "2", "3"], [8001, 8002, 8003, 8004], strict=True
    ):
        assert service["image"] == "registry/gpufleet:1.0"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [gpu], name
        assert device["capabilities"] == ["gpu"]
        # The container sees its one GPU as device 0.
        assert service["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
        cmd = service["command"]
        assert cmd[:2] == ["gpufleet", "worker"]
        assert cmd[cmd.index("--port") + 1] == str(port)
        assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
        assert cmd[cmd.index("--config") + 1] == "/etc/gpufleet/fleet.yaml"
        assert service["volumes"] == [f"{config}:/etc/gpufleet/fleet.yaml:ro"]
        assert f":{port}/health" in " ".join(service["healthcheck"]["test"])
        assert service["stop_signal"] == "SIGTERM"
    assert workers["fast-gpu0"]["command"][3:6] == ["synthetic", "--model-arg", "base_ms=5"]
    router = services["router"]
    cmd = router["command"]
    assert cmd[:2] == ["gpufleet", "router"]
    pairs = [cmd[i + 1] for i, word in enumerate(cmd) if word == "--worker"]
    assert pairs == [
        "fast@http://fast-gpu0:8001",
        "fast@http://fast-gpu1:8002",
        "http://quality-gpu2:8003",
        "http://quality-gpu3:8004",
    ]
    assert cmd[cmd.index("--route") + 1] == "/fast=fast"
    assert cmd[cmd.index("--policy") + 1] == "least-outstanding"
    # Only the router is published, on the fleet's host (loopback unless told).
    assert router["ports"] == ["127.0.0.1:8000:8000"]
    assert all("ports" not in s for s in workers.values())
    assert sorted(router["depends_on"]) == sorted(workers)


def test_cpu_workers_and_cmd_pools() -> None:
    doc = _compose(render("compose", layout_of({"cpu_workers": 2}), ExportOptions()))
    cpu = doc["services"]["worker-cpu0"]
    assert "deploy" not in cpu
    assert cpu["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    assert cpu["command"][-2:] == ["--device", "cpu"]
    layout = layout_of({"gpus": "1,", "cmd": "vllm serve M --port {port} --device cuda:{gpu}"})
    doc = _compose(render("compose", layout, ExportOptions(image="vllm/vllm-openai")))
    vllm = doc["services"]["worker-gpu1"]
    assert vllm["command"] == ["vllm", "serve", "M", "--port", "8001", "--device", "cuda:0"]
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["1"]
