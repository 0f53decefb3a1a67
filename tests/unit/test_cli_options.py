"""Options generated from the settings dataclasses: names, metavars, and a round trip."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gpufleet.cli._options import FlagValues, from_settings, given_args, metavar, options_of
from gpufleet.config import WorkerConfig
from gpufleet.config._setting import flag_of
from gpufleet.config.client import ClientConfig
from gpufleet.config.fleet import FleetConfig
from gpufleet.config.operate import BenchConfig, MonitorConfig
from gpufleet.config.ray import RayConfig
from gpufleet.config.router import RouterConfig

SETTINGS = [WorkerConfig, RouterConfig, FleetConfig, RayConfig, ClientConfig]
SETTINGS += [BenchConfig, MonitorConfig]


def test_names_follow_the_field_unless_the_field_says_otherwise() -> None:
    fleet = options_of(FleetConfig)
    assert fleet["startup_timeout_s"].names == ("--startup-timeout",)  # seconds: no _s
    assert fleet["model_args"].names == ("--model-arg",)  # one pair per use
    assert fleet["worker_args"].names == ("--worker-arg",)
    assert fleet["model"].names == ("--model", "-m")
    assert fleet["detach"].names == ("--detach",)  # a plain flag, as declared
    assert "crash_loop_after" not in fleet  # file and env only
    router = options_of(RouterConfig)
    assert router["forward_auth"].names == ("--forward-auth/--no-forward-auth",)
    assert router["allowed_upstreams"].names == ("--allow-upstream",)
    assert router["batch_retention_h"].names == ("--batch-retention-h",)
    assert options_of(WorkerConfig)["request_timeout_s"].names == (
        "--request-timeout",
        "--request-timeout-s",  # the README's spelling keeps working
    )


def test_metavars_are_plain_words() -> None:
    def word(cls: type[Any], name: str) -> str:
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        flag = flag_of(field)
        assert flag is not None
        return metavar(name, typing.get_type_hints(cls)[name], flag)

    assert word(RouterConfig, "connect_timeout_s") == "SECONDS"
    assert word(ClientConfig, "timeout") == "SECONDS"
    assert word(RouterConfig, "max_header_kb") == "KB"
    assert word(RouterConfig, "retries") == "N"
    assert word(RouterConfig, "admin_port") == "PORT"
    assert word(RouterConfig, "allowed_hosts") == "HOST"
    assert word(RouterConfig, "admin_token_file") == "PATH"
    assert word(ClientConfig, "dispatch") == "[pull|round-robin]"
    assert word(RouterConfig, "policy") == "NAME"  # too many choices: listed in the help
    assert word(WorkerConfig, "isolate_failures") == ""


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_help_texts_do_not_copy_their_defaults(cls: type[Any]) -> None:
    for field in dataclasses.fields(cls):
        flag = flag_of(field)
        if flag is None:
            continue
        assert flag.help.strip(), f"{cls.__name__}.{field.name} has no help"
        assert "default" not in flag.help.lower(), f"{cls.__name__}.{field.name}: {flag.help}"
        default = field.default
        if isinstance(default, int | float) and not isinstance(default, bool) and default:
            shown = f"{default:g}"
            assert f"({shown})" not in flag.help, f"{cls.__name__}.{field.name}: {flag.help}"


def test_given_args_read_back_give_the_same_settings() -> None:
    seen: list[FlagValues] = []
    app = typer.Typer()

    @app.command()
    @from_settings(WorkerConfig)
    def serve(flags: FlagValues) -> None:
        seen.append(flags)

    @app.command()
    def other() -> None:
        """A second command, so that typer keeps command names."""

    given: FlagValues = {name: None for name in options_of(WorkerConfig)}
    given.update(
        model="synthetic",
        model_args={"dim": "8", "speed": "2"},
        port=0,
        allowed_hosts=("a.example", "*.b.example"),
        max_wait_ms=2.5,
        isolate_failures=False,
        stall_timeout_s=0.0,
    )
    args = given_args(options_of(WorkerConfig), given)
    assert "--no-isolate-failures" in args
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 0, result.output
    assert seen == [given]
    # What was not given stays None: the environment and the file still apply.
    assert seen[0]["max_queue"] is None


def test_given_args_write_each_flag_as_its_option_spells_it() -> None:
    fleet = options_of(FleetConfig, ("detach", "gpus"))
    assert given_args(fleet, {"detach": True, "gpus": "0,"}) == ["--detach", "--gpus", "0,"]
    assert given_args(fleet, {"detach": False, "gpus": None}) == []  # no --no-detach
    ray = options_of(RayConfig, ("address",))
    assert given_args(ray, {"address": "auto"}) == ["--ray", "auto"]


def test_a_pair_without_equals_is_one_clear_line() -> None:
    app = typer.Typer()

    @app.command()
    @from_settings(WorkerConfig)
    def serve(flags: FlagValues) -> None:
        raise AssertionError("not reached")

    @app.command()
    def other() -> None:
        """A second command, so that typer keeps command names."""

    result = CliRunner().invoke(app, ["serve", "--model-arg", "dim"])
    assert result.exit_code == 2
    assert "--model-arg takes key=value, got 'dim'" in result.output


def test_an_option_that_names_a_parameter_of_the_command_is_refused() -> None:
    def serve(flags: FlagValues, port: int = 0) -> None:
        del flags, port

    with pytest.raises(TypeError, match="port"):
        from_settings(WorkerConfig)(serve)
