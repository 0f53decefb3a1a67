"""`gpufleet up --ray` without a cluster: settings, the plan, placement labels, no Ray installed."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpufleet.cli.main import app
from gpufleet.config.fleet import load_fleet_config
from gpufleet.config.ray import RayConfig, load_ray_config
from gpufleet.errors import ConfigError
from gpufleet.fleet import ray_cluster
from gpufleet.fleet.ray_actor import (
    OutputBuffer,
    RayWorkerInfo,
    fill_placeholders,
    sweep_stale_workdirs,
)
from gpufleet.fleet.ray_cluster import (
    INSTALL_HINT,
    ClusterInfo,
    forwarded_env,
    make_ray_plan,
    worker_count,
)
from gpufleet.fleet.ray_launcher import placed_spec, worker_labels

CLUSTER = ClusterInfo("10.0.0.1:6379", nodes=2, gpus=8.0, cpus=64.0)


def _info(index: int = 0, gpus: tuple[str, ...] = ("3",)) -> RayWorkerInfo:
    return RayWorkerInfo(
        index=index,
        url="http://10.0.0.2:41000",
        node_ip="10.0.0.2",
        node_id="abc123",
        hostname="gpu-node-2",
        port=41000,
        gpu_ids=gpus,
        cuda_visible_devices=",".join(gpus) or None,
        pid=4242,
        actor_pid=4200,
    )


def test_ray_settings_come_from_flags_their_own_env_and_yaml(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("ray:\n  address: auto\n  gpus_per_worker: 0.5\n  strategy: DEFAULT\n")
    # GPUFLEET_WORKERS is the router's list of URLs: the Ray section must not read it.
    env = {"GPUFLEET_WORKERS": "http://a:1,http://b:2", "GPUFLEET_RAY_WORKERS": "3"}
    cfg = load_ray_config(config_path=config, env=env)
    assert (cfg.address, cfg.gpus_per_worker, cfg.workers) == ("auto", 0.5, 3)
    assert cfg.strategy == "DEFAULT"
    assert cfg.enabled
    flags = {"address": "10.0.0.1:6379", "workers": 2}
    assert load_ray_config(flags=flags, config_path=config, env=env).workers == 2
    assert not load_ray_config(env={}).enabled


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": " "},
        {"gpus_per_worker": -1.0},
        {"workers": 0},
        {"max_restarts": -2},
    ],
)
def test_bad_ray_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RayConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_keys_of_the_ray_section_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("ray:\n  adress: auto\n")
    with pytest.raises(ConfigError, match="adress"):
        load_ray_config(config_path=config, env={})


def test_worker_count_follows_the_cluster_gpus() -> None:
    assert worker_count(RayConfig(address="auto"), CLUSTER) == 8
    assert worker_count(RayConfig(address="auto", gpus_per_worker=2), CLUSTER) == 4
    assert worker_count(RayConfig(address="auto", gpus_per_worker=0.5), CLUSTER) == 16
    assert worker_count(RayConfig(address="auto", workers=3), CLUSTER) == 3
    no_gpu = ClusterInfo("h:1", nodes=1, gpus=0.0, cpus=8.0)
    with pytest.raises(ConfigError, match="--workers"):
        worker_count(RayConfig(address="auto"), no_gpu)
    cpu_only = RayConfig(address="auto", gpus_per_worker=0, workers=2)
    assert worker_count(cpu_only, no_gpu) == 2


def test_only_model_settings_travel_to_other_nodes() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "CUDA_VISIBLE_DEVICES": "0",
        "HF_HOME": "/data/hf",
        "GPUFLEET_MAX_BATCH_SIZE": "16",
        "GPUFLEET_ADMIN_TOKEN": "secret",
        "GPUFLEET_PORT": "8000",
    }
    env = forwarded_env(base)
    assert env == {
        "HF_HOME": "/data/hf",
        "GPUFLEET_MAX_BATCH_SIZE": "16",
        "PYTHONUNBUFFERED": "1",
    }


def test_the_plan_has_one_spec_per_slot_filled_in_on_its_node(tmp_path: Path) -> None:
    cfg = load_fleet_config(flags={"model": "synthetic", "model_args": {"base_ms": "5"}}, env={})
    plan = make_ray_plan(
        cfg,
        RayConfig(address="auto", workers=3),
        CLUSTER,
        base_env={"CUDA_VISIBLE_DEVICES": "0,1", "HF_HOME": "/hf"},
        cwd=str(tmp_path),
        config_path="/etc/gpufleet.yaml",
    )
    assert [w.spec.name for w in plan.workers] == ["worker-ray-0", "worker-ray-1", "worker-ray-2"]
    spec = plan.workers[0].spec
    argv = list(spec.argv)
    assert argv[:6] == ["{python}", "-m", "gpufleet", "worker", "--model", "synthetic"]
    assert argv[argv.index("--host") + 1] == "{host}"
    assert argv[argv.index("--port") + 1] == "0"
    assert argv[argv.index("--port-file") + 1] == "{port_file}"
    # The driver's config path may not exist on the node: the actor writes the text there.
    assert argv[argv.index("--config") + 1] == "{config}"
    assert "base_ms=5" in argv
    assert "--device" not in argv
    # Ray sets the mask in each actor; the driver's own must not leak into a worker.
    assert "CUDA_VISIBLE_DEVICES" not in spec.env
    assert spec.env["HF_HOME"] == "/hf"
    assert spec.labels["launcher"] == "ray"
    assert [w.spec.labels["index"] for w in plan.workers] == ["0", "1", "2"]
    assert spec.log_path == tmp_path / "logs" / "worker-ray-0.log"
    assert "Ray at 10.0.0.1:6379" in plan.discovery.source
    lines = ray_cluster.ray_startup_lines(RayConfig(address="auto"), CLUSTER, plan)
    assert "2 node(s), 8 GPU(s)" in lines[0]
    assert "3 worker(s) of synthetic" in lines[1]


def test_cpu_workers_and_commands_on_ray(tmp_path: Path) -> None:
    cfg = load_fleet_config(flags={"cmd": "vllm serve m --host {host} --port {port}"}, env={})
    cpu = RayConfig(address="auto", gpus_per_worker=0, workers=2)
    plan = make_ray_plan(cfg, cpu, CLUSTER, base_env={}, cwd=str(tmp_path))
    assert plan.on_cpu
    assert plan.workers[0].spec.argv == (
        "vllm",
        "serve",
        "m",
        "--host",
        "{host}",
        "--port",
        "{port}",
    )
    model = load_fleet_config(flags={"model": "synthetic"}, env={})
    argv = make_ray_plan(model, cpu, CLUSTER, base_env={}, cwd=str(tmp_path)).workers[0].spec.argv
    assert argv[argv.index("--device") + 1] == "cpu"


def test_several_pools_are_refused_on_ray(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "fleet:\n  pools:\n    a: {model: synthetic}\n    b: {model: synthetic, prefix: /b}\n"
    )
    cfg = load_fleet_config(config_path=config, env={})
    with pytest.raises(ConfigError, match="one pool"):
        make_ray_plan(cfg, RayConfig(address="auto"), CLUSTER, base_env={}, cwd=str(tmp_path))


def test_placeholders_are_filled_and_other_braces_kept() -> None:
    argv = ["{python}", "--port", "{port}", '{"a": 1}', "{unknown}", "x{host}y"]
    values = {"python": "/py", "port": "41000", "host": "10.0.0.2"}
    assert fill_placeholders(argv, values) == [
        "/py",
        "--port",
        "41000",
        '{"a": 1}',
        "{unknown}",
        "x10.0.0.2y",
    ]


def test_a_placed_spec_serves_on_its_node_and_says_where(tmp_path: Path) -> None:
    cfg = load_fleet_config(flags={"model": "synthetic"}, env={})
    planned = make_ray_plan(
        cfg, RayConfig(address="auto"), CLUSTER, base_env={}, cwd=str(tmp_path)
    ).workers[1]
    placed = placed_spec(planned.spec, _info(index=1))
    assert placed.url == "http://10.0.0.2:41000"
    assert placed.env["CUDA_VISIBLE_DEVICES"] == "3"
    assert placed.argv == planned.spec.argv
    assert placed.labels["placement"] == "10.0.0.2/gpu3"
    assert placed.labels["node"] == "10.0.0.2"
    assert placed.labels["hostname"] == "gpu-node-2"
    assert placed.labels["actor_pid"] == "4200"
    assert placed.labels["launcher"] == "ray"
    assert worker_labels(_info(gpus=()))["placement"] == "10.0.0.2/cpu"
    assert worker_labels(_info(gpus=("2", "3")))["gpu"] == "2,3"


async def test_the_output_buffer_drops_the_oldest_past_its_cap() -> None:
    out = OutputBuffer(limit=10)
    for chunk in (b"aaaa", b"bbbb", b"cccc"):
        await out.put(chunk)
    assert await out.take() == b"bbbbcccc"
    waiting = asyncio.ensure_future(out.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    await out.put(b"d")
    assert await waiting == b"d"
    await out.close()
    assert await out.take() == b""


def test_an_address_where_nothing_listens_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Closed now: the connection is refused at once.
    with pytest.raises(ConfigError, match=f"nothing answers at the Ray address 127.0.0.1:{port}"):
        ray_cluster.check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        ray_cluster.check_reachable("head-node")
    for left_to_ray in (None, "auto", "ray://head:10001"):
        ray_cluster.check_reachable(left_to_ray)


def test_without_ray_import_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import ray` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'gpufleet\[ray\]'"):
        ray_cluster.import_ray()


def test_up_ray_without_ray_exits_2_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.chdir(tmp_path)
    for flag in (["--ray"], ["--ray-address", "10.0.0.1:6379"]):
        result = CliRunner().invoke(app, ["up", *flag, "--model", "synthetic", "--port", "0"])
        assert result.exit_code == 2, result.output
        assert INSTALL_HINT in result.output
    # Nothing was started: no run directory was claimed.
    assert not (tmp_path / ".gpufleet").exists()


def test_ray_flags_without_ray_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["up", "--model", "synthetic", "--workers", "3"])
    assert result.exit_code == 2, result.output
    assert "need --ray" in result.output
    assert not (tmp_path / ".gpufleet").exists()


def test_work_folders_of_dead_actors_are_swept(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    dead = tmp_path / f"gpufleet-ray-{dead_pid}-abcd"
    mine = tmp_path / f"gpufleet-ray-{os.getpid()}-efgh"
    other = tmp_path / "gpufleet-ray-notapid"
    for folder in (dead, mine, other):
        folder.mkdir()
        (folder / "port").write_text("41000\n")
    assert sweep_stale_workdirs(tmp_path) == [dead]
    assert not dead.exists()
    assert mine.exists()
    assert other.exists()
