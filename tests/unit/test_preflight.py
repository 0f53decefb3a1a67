"""What `gpufleet up` checks before starting anything: models, config files, ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gpufleet._sockets import port_holder
from gpufleet.config import WorkerConfig, check_file, load
from gpufleet.config.fleet import load_fleet_config
from gpufleet.errors import ConfigError
from gpufleet.models import check_model_spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("minilmm", "unknown model 'minilmm': did you mean 'minilm'?"),
        ("nope", "unknown model 'nope': (built-in: image-demo, minilm, synthetic;"),
        ("no_such_pkg.models:X", "cannot import model module 'no_such_pkg.models'"),
        (
            "gpufleet.models.synthetic:Synthetc",
            "has no class 'Synthetc' (did you mean 'Synthetic'?)",
        ),
        ("missing.py:X", "model file missing.py does not exist"),
    ],
)
def test_model_specs_are_checked_without_importing_them(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_model_spec(spec)
    assert message in str(caught.value)


def test_model_files_are_parsed_not_run(tmp_path: Path) -> None:
    f = tmp_path / "mine.py"
    f.write_text("raise SystemExit('imported!')\nclass Mine:\n    pass\n")
    check_model_spec(f"{f}:Mine")  # found by reading the source: nothing ran
    for name in ("minilm", "synthetic", "image-demo", "gpufleet.models.minilm:MiniLM"):
        check_model_spec(name)
    f.write_text("class Mine(\n")
    with pytest.raises(ConfigError, match=r"mine\.py, line 1"):
        check_model_spec(f"{f}:Mine")


def test_port_holder_names_the_listening_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
        assert port_holder(port) is None  # bound, not listening
        s.listen()
        holder = port_holder(port)
    assert holder is not None
    assert holder.startswith(f"pid {os.getpid()}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "fleeet:\n  model: x\n",
            "c.yaml, line 1: unknown section 'fleeet' (did you mean 'fleet'?)",
        ),
        (
            "fleet:\n  model: synthetic\n  modle: x\n",
            "c.yaml, line 3: unknown setting 'modle' in fleet (did you mean 'model'?)",
        ),
        (
            "fleet:\n  pools:\n    a: {model: synthetic,\n        gpuz: '0'}\n",
            "c.yaml, line 4: unknown setting 'gpuz' in fleet.pools.a (did you mean 'gpus'?)",
        ),
        ("router:\n  policy: fastest\n", "c.yaml, line 2: policy must be one of prefix, capacity"),
        ("worker:\n  port: many\n", "c.yaml, line 2: port: cannot read 'many' as int"),
        ("fleet:\n  model: [a\n", "c.yaml, line 3, column 1: not valid YAML: while parsing"),
        ("fleet:\n  discovery: nvsmi\n", "discovery must be one of auto, nvml, nvidia-smi, none"),
    ],
)
def test_config_mistakes_point_at_the_line(
    tmp_path: Path, text: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("c.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        check_file("c.yaml")
    assert message in str(caught.value)
    assert "Literal" not in str(caught.value)


def test_each_part_refuses_its_own_unknown_keys_with_a_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("worker:\n  max_batch: 3\n")
    with pytest.raises(ConfigError, match=r"line 2: unknown setting 'max_batch' in worker \(did"):
        load(WorkerConfig, "worker", config_path=f, env={})
    f.write_text("fleet:\n  restart_backof_s: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'restart_backoff_s'"):
        load_fleet_config(config_path=f, env={})


def test_a_flag_or_env_choice_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="--policy must be one of prefix, capacity, round-robin"):
        load_fleet_config(flags={"policy": "fastest"}, env={})
    with pytest.raises(ConfigError, match="GPUFLEET_POLICY must be one of prefix"):
        load_fleet_config(env={"GPUFLEET_POLICY": "fastest"})
    with pytest.raises(ConfigError, match="--log-level must be one of debug, info, warning, error"):
        load(WorkerConfig, "worker", flags={"log_level": "verbose"}, env={})
    # Case does not matter: GPUFLEET_LOG_LEVEL=DEBUG is debug.
    assert load(WorkerConfig, "worker", env={"GPUFLEET_LOG_LEVEL": "DEBUG"}).log_level == "debug"


def test_status_of_a_fleet_that_no_longer_runs_is_one_line() -> None:
    from gpufleet.fleet.status import format_status

    state = {
        "alive": False,
        "pid": 42,
        "phase": "stopped",
        "endpoint": "http://127.0.0.1:8000",
        "workers": [{"name": "worker-cpu-1", "pool": "default", "port": 1, "state": "ready"}],
        "router": {},
    }
    assert format_status(state) == (
        "fleet pid 42 is not running (last seen stopped); start one with `gpufleet up`"
    )
