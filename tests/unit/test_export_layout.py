"""The layout every deployment file renders: devices, ports, pools (gpufleet export)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.errors import ConfigError
from gpufleet.fleet.devices import Discovery, apply_mask
from tests.unit._export import POOLS_YAML, UUIDS, four_gpus, layout_of, write_config


def test_gpus_as_given_when_this_machine_sees_none() -> None:
    layout = layout_of({"gpus": "3", "model": "synthetic"})
    assert layout.gpu_source == "as given"
    assert [s.visible_devices for s in layout.slots] == ["0", "1", "2"]
    assert [s.port for s in layout.slots] == [8001, 8002, 8003]
    listed = layout_of({"gpus": "1,3"})
    assert [s.visible_devices for s in listed.slots] == ["1", "3"]
    assert [s.device for s in listed.slots] == ["gpu1", "gpu3"]


def test_discovered_gpus_select_like_up() -> None:
    layout = layout_of({"gpus": "1,3"}, found=four_gpus())
    assert layout.gpu_source == "nvidia-smi"
    assert [s.visible_devices for s in layout.slots] == ["1", "3"]
    with pytest.raises(ConfigError, match="not visible"):
        layout_of({"gpus": "7,"}, found=four_gpus())
    # An inherited mask renumbers: visible GPU 1 under "2,3" is physical GPU 3.
    masked = Discovery(tuple(apply_mask(four_gpus().gpus, "2,3")), "nvidia-smi")
    assert [s.visible_devices for s in layout_of({"gpus": "1,"}, found=masked).slots] == ["3"]
    by_uuid = Discovery(tuple(apply_mask(four_gpus().gpus, UUIDS[2])), "nvidia-smi")
    assert [s.visible_devices for s in layout_of(found=by_uuid).slots] == [UUIDS[2]]


def test_cpu_workers_when_no_gpu_and_ports_skip_the_endpoint() -> None:
    layout = layout_of({"cpu_workers": 3, "port": 9001, "worker_base_port": 9000})
    assert layout.on_cpu
    assert [s.device for s in layout.slots] == ["cpu0", "cpu1", "cpu2"]
    assert [s.visible_devices for s in layout.slots] == ["", "", ""]
    assert [s.port for s in layout.slots] == [9000, 9002, 9003]
    assert layout_of({"port": 0}).port == 8000
    with pytest.raises(ConfigError, match="nothing to export"):
        layout_of({"cpu_workers": 0})


def test_workers_per_gpu_and_worker_argv() -> None:
    layout = layout_of({"gpus": "2", "workers_per_gpu": 2, "model": "synthetic"})
    assert [s.device for s in layout.slots] == ["gpu0", "gpu0-1", "gpu1", "gpu1-1"]
    pool = layout.pools[0]
    assert [g.index for g in pool.gpus] == [0, 1]
    argv = pool.worker_argv(layout.slots[1], exe=("gpufleet",), host="h", config_path="/c.yaml")
    assert argv == (
        "gpufleet", "worker", "--model", "synthetic", "--host", "h", "--port", "8002",
        "--config", "/c.yaml",
    )  # fmt: skip
    cpu = layout_of({"cpu_workers": 1, "model_args": {"speed": "2"}})
    argv = cpu.pools[0].worker_argv(cpu.slots[0], exe=("x",), host="h", config_path=None)
    assert argv == (
        "x", "worker", "--model", "minilm", "--model-arg", "speed=2", "--host", "h",
        "--port", "8001", "--device", "cpu",
    )  # fmt: skip


def test_cmd_pool_fills_placeholders() -> None:
    layout = layout_of({"gpus": "2", "cmd": "vllm serve M --port {port} --dev {gpu} --i {index}"})
    pool = layout.pools[0]
    argv = pool.worker_argv(layout.slots[1], exe=("gpufleet",), host="h", config_path="/c")
    assert argv == ("vllm", "serve", "M", "--port", "8002", "--dev", "1", "--i", "1")
    inside = pool.worker_argv(layout.slots[1], exe=(), host="h", config_path=None, gpu_label="0")
    assert inside[6] == "0"


def test_pools_from_yaml(tmp_path: Path) -> None:
    layout = layout_of(config=write_config(tmp_path, POOLS_YAML))
    assert [(p.name, p.router_pool, p.prefix) for p in layout.pools] == [
        ("fast", "fast", "/fast"),
        ("quality", "default", None),
    ]
    assert layout.routes == {"/fast": "fast"}
    assert [(s.pool, s.visible_devices, s.port) for s in layout.slots] == [
        ("fast", "0", 8001),
        ("fast", "1", 8002),
        ("quality", "2", 8003),
        ("quality", "3", 8004),
    ]
    assert layout.router.max_fails == 5
    argv = layout.router_argv(exe=("g",), host="0.0.0.0", urls=[("fast", "http://a:1")])
    assert argv == (
        "g", "router", "--host", "0.0.0.0", "--port", "8000", "--worker", "fast@http://a:1",
        "--route", "/fast=fast", "--policy", "least-outstanding",
    )  # fmt: skip
