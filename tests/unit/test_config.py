"""Settings precedence: flag > GPUFLEET_* env > YAML file > default; bad values are ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.config import WorkerConfig, load
from gpufleet.errors import ConfigError


def test_defaults_are_safe() -> None:
    cfg = load(WorkerConfig, "worker", env={})
    assert cfg.host == "127.0.0.1"
    assert cfg.max_body_mb == 32
    assert cfg.model == "minilm"


def test_precedence(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text("worker:\n  max_wait_ms: 7\n  max_queue: 10\n  port: 9000\n")
    env = {"GPUFLEET_MAX_QUEUE": "20", "GPUFLEET_PORT": "9100"}
    cfg = load(WorkerConfig, "worker", flags={"port": 9200}, config_path=f, env=env)
    assert cfg.port == 9200  # flag
    assert cfg.max_queue == 20  # env
    assert cfg.max_wait_ms == 7  # file


def test_model_args_from_env_and_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("worker:\n  model_args: {base_ms: 5, speed: 2}\n")
    assert load(WorkerConfig, "worker", config_path=f, env={}).model_args == {
        "base_ms": "5",
        "speed": "2",
    }
    env = {"GPUFLEET_MODEL_ARGS": "base_ms=1,speed=0.5"}
    assert load(WorkerConfig, "worker", env=env).model_args == {"base_ms": "1", "speed": "0.5"}


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("worker:\n  max_batch: 3\n", "unknown setting"),
        ("worker:\n  port: many\n", "port"),
        ("worker:\n  max_queue: 0\n", "max_queue"),
        ("worker:\n  stall_timeout_s: -1\n", "stall_timeout_s"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, yaml_text: str, needle: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=needle):
        load(WorkerConfig, "worker", config_path=f, env={})


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(WorkerConfig, "worker", config_path=tmp_path / "nope.yaml", env={})


def test_batch_resolves_against_model() -> None:
    cfg = WorkerConfig()
    assert cfg.batch(None).max_batch_size == 32
    assert cfg.batch(8).max_batch_size == 8
    assert WorkerConfig(max_batch_size=4).batch(8).max_batch_size == 4


def test_stall_timeout_from_flag_env_and_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("worker:\n  stall_timeout_s: 30\n")
    assert load(WorkerConfig, "worker", env={}).stall_timeout_s == 60  # on by default
    assert load(WorkerConfig, "worker", config_path=f, env={}).stall_timeout_s == 30
    env = {"GPUFLEET_STALL_TIMEOUT_S": "0"}  # 0: off
    assert load(WorkerConfig, "worker", config_path=f, env=env).stall_timeout_s == 0
    flags = {"stall_timeout_s": 2.5}
    assert load(WorkerConfig, "worker", flags=flags, config_path=f, env=env).stall_timeout_s == 2.5
