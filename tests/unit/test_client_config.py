"""``ClientConfig`` from flags, ``GPUFLEET_*`` env and the YAML ``client:`` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.config import load
from gpufleet.config.client import ClientConfig
from gpufleet.errors import ConfigError


def test_yaml_endpoints_list_and_env_override(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(
        "client:\n  endpoints:\n    - http://gpu0:8000\n    - http://gpu1:8000\n"
        "  seed: 5\n  dispatch: round-robin\n"
    )
    cfg = load(ClientConfig, "client", config_path=f, env={})
    assert cfg.endpoints == ("http://gpu0:8000", "http://gpu1:8000")
    assert cfg.seed == 5
    assert cfg.dispatch == "round-robin"
    env = {"GPUFLEET_ENDPOINTS": "http://a:1, http://b:2", "GPUFLEET_SEED": "9"}
    cfg = load(ClientConfig, "client", config_path=f, env=env)
    assert cfg.endpoints == ("http://a:1", "http://b:2")
    assert cfg.seed == 9
    flags = {"endpoints": ("http://c:3",), "seed": 1}
    cfg = load(ClientConfig, "client", flags=flags, config_path=f, env=env)
    assert cfg.endpoints == ("http://c:3",)
    assert cfg.seed == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"per_endpoint_concurrency": 0},
        {"max_attempts": 0},
        {"timeout": 0},
        {"deadline": -1},
        {"path": "predict"},
        {"endpoints": ("gpu0:8000",)},
        {"dispatch": "random"},
        {"retry_base_s": 2.0, "retry_max_s": 1.0},
    ],
)
def test_bad_values_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load(ClientConfig, "client", flags=bad, env={})


def test_unknown_yaml_key(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text("client:\n  endpoint: http://x:1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load(ClientConfig, "client", config_path=f, env={})
