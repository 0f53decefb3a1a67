"""The ``gpufleet`` entry point's argument forms: ``up --ray`` takes an optional value."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from gpufleet.cli.main import app


class _Stop(Exception):
    """Raised by the stand-in loader: what up would build has been seen."""


@pytest.fixture
def ray_flags(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``up`` hands to ``load_ray_config`` (it stops there)."""
    import gpufleet.config.ray as ray_config

    seen: list[dict[str, Any]] = []

    def load(**kwargs: Any) -> Any:
        seen.append(dict(kwargs["flags"]))
        raise _Stop

    monkeypatch.setattr(ray_config, "load_ray_config", load)
    return seen


@pytest.mark.parametrize(
    ("args", "address"),
    [
        (["--ray"], "auto"),
        (["--ray", "--model", "synthetic"], "auto"),
        (["--model", "synthetic", "--ray"], "auto"),
        (["--ray", "10.0.0.1:6379", "--model", "synthetic"], "10.0.0.1:6379"),
        (["--ray=ray://h:10001"], "ray://h:10001"),
        (["--ray-address", "10.0.0.2:6379"], "10.0.0.2:6379"),
        (["--ray", "--ray-address", "10.0.0.3:6379"], "10.0.0.3:6379"),
        ([], None),
    ],
)
def test_ray_alone_joins_the_local_cluster_and_with_a_value_names_one(
    args: list[str], address: str | None, ray_flags: list[dict[str, Any]], tmp_path: Any
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        result = CliRunner().invoke(app, ["up", *args])
    assert isinstance(result.exception, _Stop), result.output
    assert ray_flags == [
        {"address": address, "gpus_per_worker": None, "workers": None, "max_restarts": None}
    ]


def test_other_commands_take_no_ray_option() -> None:
    # ``generate -f up --ray x`` once went through an argv rewriter: nothing rewrites now.
    result = CliRunner().invoke(app, ["generate", "-f", "up", "--ray", "x"])
    assert result.exit_code == 2
    assert "--ray" in result.output
