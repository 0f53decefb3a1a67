"""FleetConfig: precedence, pools from YAML, validation; the plan it turns into."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.config.fleet import FleetConfig, PoolConfig, load_fleet_config
from gpufleet.errors import ConfigError
from gpufleet.fleet.devices import Discovery, parse_query_output
from gpufleet.fleet.member import backoff_delay
from gpufleet.fleet.plan import expand_cmd, make_plan, router_spec

QUERY = "".join(f"{i}, GPU-{i}aaa-bbbb, NVIDIA L4, 23034 MiB\n" for i in range(4))
FOUR = Discovery(tuple(parse_query_output(QUERY)), "test")
NONE = Discovery((), "none", ("nvidia-smi: not on PATH",))


def test_defaults_are_safe() -> None:
    cfg = load_fleet_config(env={})
    assert cfg.host == "127.0.0.1"
    assert cfg.worker_host == "127.0.0.1"
    assert cfg.startup_timeout_s == 600
    assert cfg.cpu_workers == 2
    assert cfg.model == "minilm"


def test_precedence_and_pools(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(
        "fleet:\n  port: 9000\n  policy: round-robin\n  cpu_workers: 4\n"
        "  pools:\n"
        "    fast: {model: synthetic, gpus: '0,1', prefix: /fast, model_args: {speed: 2}}\n"
        "    quality: {cmd: 'serve --port {port}', gpus: '2,3'}\n"
    )
    env = {"GPUFLEET_POLICY": "power-of-two", "GPUFLEET_CPU_WORKERS": "3"}
    cfg = load_fleet_config(flags={"port": 9100}, config_path=f, env=env)
    assert cfg.port == 9100
    assert cfg.policy == "power-of-two"
    assert cfg.cpu_workers == 3
    assert [p.name for p in cfg.pools] == ["fast", "quality"]
    fast, quality = cfg.effective_pools()
    assert (fast.model, fast.model_args, fast.prefix, fast.gpus) == (
        "synthetic",
        {"speed": "2"},
        "/fast",
        "0,1",
    )
    assert (quality.model, quality.cmd) == (None, "serve --port {port}")


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("fleet:\n  gpus: 'x1'\n", "neither a GPU index"),
        ("fleet:\n  cmd: 'serve --port {prot}'\n", "unknown placeholder"),
        ("fleet:\n  restart_backoff_s: 5\n  restart_backoff_max_s: 1\n", "restart_backoff_max_s"),
        ("fleet:\n  pools: {a: {model: m, cmd: c}}\n", "not both"),
        ("fleet:\n  pools: {a: {model: m}, b: {model: m}}\n", "at most one pool"),
        ("fleet:\n  pools: {a: {prefix: nope}}\n", "prefix"),
        ("fleet:\n  pools: {a: {colour: red}}\n", "unknown setting"),
        ("fleet:\n  pools: [1, 2]\n", "mapping"),
    ],
)
def test_bad_settings_name_the_problem(tmp_path: Path, yaml_text: str, needle: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=needle):
        load_fleet_config(config_path=f, env={})


def test_backoff_is_capped_exponential() -> None:
    assert [backoff_delay(n, 1.0, 10.0) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff_delay(500, 0.5, 30.0) == 30.0


def test_expand_cmd_fills_only_known_placeholders() -> None:
    argv = expand_cmd(
        "vllm serve m --port {port} --x '{\"a\": 1}' --tag g{gpu}i{index}@{host}",
        port=8001,
        gpu="2",
        index=1,
        host="127.0.0.1",
    )
    assert argv == (
        "vllm",
        "serve",
        "m",
        "--port",
        "8001",
        "--x",
        '{"a": 1}',
        "--tag",
        "g2i1@127.0.0.1",
    )


def test_plan_pins_each_worker_to_one_gpu(tmp_path: Path) -> None:
    cfg = FleetConfig(model="synthetic", workers_per_gpu=2, gpus="1,3", worker_base_port=20400)
    plan = make_plan(cfg, FOUR, python="py", base_env={"GPUFLEET_PORT": "1"}, cwd=str(tmp_path))
    got = [(w.spec.env["CUDA_VISIBLE_DEVICES"], w.spec.port) for w in plan.workers]
    assert got == [("1", 20400), ("1", 20401), ("3", 20402), ("3", 20403)]
    w = plan.workers[0]
    assert w.spec.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "GPUFLEET_PORT" not in w.spec.env  # the fleet sets each child's port itself
    assert w.spec.argv[:6] == ("py", "-m", "gpufleet", "worker", "--model", "synthetic")
    assert w.spec.log_path == tmp_path / "logs" / "worker-1-20400.log"
    assert not plan.on_cpu


def test_plan_cpu_fallback_and_pools(tmp_path: Path) -> None:
    cfg = FleetConfig(
        cpu_workers=3,
        pools=(
            PoolConfig(name="main", model="synthetic"),
            PoolConfig(name="bad", model="synthetic", cpu_workers=1, prefix="/bad"),
        ),
    )
    plan = make_plan(cfg, NONE, python="py", base_env={}, cwd=str(tmp_path), cpu_count=8)
    assert plan.on_cpu
    assert [(w.pool, w.router_pool, w.device) for w in plan.workers] == [
        ("main", "default", "cpu"),
        ("main", "default", "cpu"),
        ("main", "default", "cpu"),
        ("bad", "bad", "cpu"),
    ]
    assert {w.spec.env["CUDA_VISIBLE_DEVICES"] for w in plan.workers} == {""}
    assert {w.spec.env["OMP_NUM_THREADS"] for w in plan.workers} == {"2"}
    assert "--device" in plan.workers[0].spec.argv
    spec = router_spec(
        cfg,
        plan,
        plan.workers,
        python="py",
        base_env={},
        cwd=str(tmp_path),
        port=0,
        port_file=tmp_path / "p",
        token="t" * 16,
    )
    argv = list(spec.argv)
    assert argv.count("--worker") == 4
    assert f"bad@{plan.workers[3].url}" in argv
    assert argv[argv.index("--route") + 1] == "/bad=bad"
    assert spec.env["GPUFLEET_ADMIN_TOKEN"] == "t" * 16


def test_plan_refuses_nothing_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to start"):
        make_plan(FleetConfig(cpu_workers=0), NONE, python="py", base_env={}, cwd=str(tmp_path))
    with pytest.raises(ConfigError, match="only 4"):
        make_plan(FleetConfig(gpus="6"), FOUR, python="py", base_env={}, cwd=str(tmp_path))


def test_a_lone_index_stays_an_index(tmp_path: Path) -> None:
    cfg = FleetConfig(gpus="2,")
    assert cfg.gpus == "2,"
    plan = make_plan(cfg, FOUR, python="py", base_env={}, cwd=str(tmp_path))
    assert [w.spec.env["CUDA_VISIBLE_DEVICES"] for w in plan.workers] == ["2"]
    assert (
        len(make_plan(FleetConfig(gpus="2"), FOUR, python="py", base_env={}, cwd=".").workers) == 2
    )


def test_stall_timeout_reaches_every_gpufleet_worker_but_not_a_cmd(tmp_path: Path) -> None:
    def argvs(cfg: FleetConfig) -> list[tuple[str, ...]]:
        plan = make_plan(cfg, NONE, python="py", base_env={}, cwd=str(tmp_path))
        return [w.spec.argv for w in plan.workers]

    # Unset: the workers read their own (worker: section, GPUFLEET_STALL_TIMEOUT_S, 60).
    assert all("--stall-timeout" not in a for a in argvs(FleetConfig(cpu_workers=2)))
    env = {"GPUFLEET_STALL_TIMEOUT_S": "2.5"}
    for argv in argvs(load_fleet_config(flags={"cpu_workers": 2}, env=env)):
        assert argv[argv.index("--stall-timeout") + 1] == "2.5"
    pools = (
        PoolConfig(name="own", model="synthetic", worker_args=("--stall-timeout", "9")),
        PoolConfig(name="foreign", cmd="serve --port {port}", prefix="/f"),
    )
    own, foreign = argvs(FleetConfig(cpu_workers=1, stall_timeout_s=0, pools=pools))
    assert own[own.index("--stall-timeout") + 1] == "0"
    assert own[-2:] == ("--stall-timeout", "9")  # the pool's own comes last and wins
    assert foreign == ("serve", "--port", foreign[-1])
    with pytest.raises(ConfigError, match="stall_timeout_s"):
        FleetConfig(stall_timeout_s=-1)


def test_gpu_ids_is_a_list_that_only_a_flag_beats(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text("fleet:\n  gpus: '0,1'\n")
    ids = {"GPU_IDS": "3", "GPUFLEET_GPUS": "2"}
    assert load_fleet_config(config_path=f, env=ids).gpus == "3,"  # GPU 3, not three GPUs
    assert load_fleet_config(config_path=f, env={**ids, "GPU_IDS": "1,3"}).gpus == "1,3"
    assert load_fleet_config(flags={"gpus": "0,"}, config_path=f, env=ids).gpus == "0,"
    assert load_fleet_config(config_path=f, env={"GPU_IDS": " "}).gpus == "0,1"
    assert load_fleet_config(config_path=f, env={"GPUFLEET_GPUS": "2"}).gpus == "2"
