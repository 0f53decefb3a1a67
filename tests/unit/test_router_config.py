"""Router settings and the parsing of --worker / --route values."""

from __future__ import annotations

import pytest

from gpufleet.config import load
from gpufleet.config.router import RouterConfig
from gpufleet.errors import ConfigError
from gpufleet.router.pool import Registry, parse_route, parse_worker


def test_worker_specs() -> None:
    assert parse_worker("http://h:1") == parse_worker("http://h:1/")
    spec = parse_worker("gpu@http://h:1=2.5")
    assert (spec.pool, spec.url, spec.weight) == ("gpu", "http://h:1", 2.5)
    assert parse_worker("https://h=3").weight == 3.0
    for bad in ("ftp://h", "h:1", "http://h:1=0", "http://h:1=x", "@http://h", "http://h/?q=1"):
        with pytest.raises(ConfigError):
            parse_worker(bad)


def test_routes_longest_prefix_wins_and_is_stripped() -> None:
    reg = Registry()
    reg.add_route(*parse_route("/embed=emb"))
    reg.add_route(*parse_route("/embed/v2/=emb2"))
    assert [(p.name, path) for p, path in [reg.resolve("/embed/x")]] == [("emb", "/x")]
    assert reg.resolve("/embed/v2/y")[0].name == "emb2"
    assert reg.resolve("/embed/v2/y")[1] == "/y"
    assert reg.resolve("/embed")[1] == "/"
    assert reg.resolve("/embedding")[0].name == "default"  # a prefix matches whole segments
    with pytest.raises(ConfigError):
        parse_route("embed=emb")


def test_precedence_flag_env_file(tmp_path: object) -> None:
    from pathlib import Path

    cfg_file = Path(str(tmp_path)) / "r.yaml"
    cfg_file.write_text("router:\n  policy: sticky\n  retries: 5\n  max_queue: 7\n")
    cfg = load(
        RouterConfig,
        "router",
        flags={"retries": 1, "workers": ("http://a:1", "http://b:2")},
        env={"GPUFLEET_MAX_QUEUE": "9", "GPUFLEET_ADMIN_TOKEN": "secret-token"},
        config_path=cfg_file,
    )
    assert (cfg.policy, cfg.retries, cfg.max_queue) == ("sticky", 1, 9)
    assert cfg.admin_token == "secret-token"
    assert cfg.workers == ("http://a:1", "http://b:2")


@pytest.mark.parametrize(
    "field",
    [
        {"policy": "random"},
        {"max_queue": 0},
        {"timeout_s": 0},
        {"retries": -1},
        {"health_path": "health"},
        {"admin_token": "short"},
        {"port": 70000},
    ],
)
def test_bad_settings_are_config_errors(field: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RouterConfig(**field)  # type: ignore[arg-type]
