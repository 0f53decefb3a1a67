"""``--help`` reads like the tools people know: plain metavars, one way of showing
defaults (``[default: X]``, from the settings themselves), choices listed (issue 14)."""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any

import pytest
import typer

from gpufleet.cli import export as export_cmds
from gpufleet.cli._options import options_of, shown_default
from gpufleet.cli.main import app, main
from gpufleet.config import WorkerConfig
from gpufleet.config.client import ClientConfig
from gpufleet.config.fleet import FleetConfig
from gpufleet.config.operate import BenchConfig, MonitorConfig
from gpufleet.config.ray import RayConfig
from gpufleet.config.router import RouterConfig
from gpufleet.operate.export.options import ExportOptions


def _command_paths(group: Any, path: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command and group under ``group``, as the words that name it."""
    out = [list(path)]
    for name, command in getattr(group, "commands", {}).items():
        out += _command_paths(command, (*path, name))
    return out


#: Every command of ``gpufleet`` (and the groups), read from the app itself.
COMMANDS = _command_paths(typer.main.get_command(app))


def test_the_command_list_is_whole() -> None:
    for words in (["up"], ["worker"], ["router"], ["generate"], ["config", "show"], []):
        assert words in COMMANDS
    assert ["batches", "list"] in COMMANDS


def _help(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(sys, "argv", ["gpufleet", *args, "--help"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    return capsys.readouterr().out


def _line(text: str, option: str) -> str:
    found = [line for line in text.splitlines() if re.search(rf"{option}\b(?!-)", line)]
    assert found, f"no {option} in:\n{text}"
    return " ".join(found[0].replace("│", " ").split())


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "gpufleet")
def test_no_type_names_and_one_way_of_defaults(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(args, monkeypatch, capsys)
    assert re.findall(r"<[a-z\[\]]+>", text) == []  # no <str>, <bool>, <list[str]>
    assert re.findall(r"\b(?:TEXT|INTEGER|FLOAT|BOOLEAN)\b", text) == []  # plain metavars
    assert "(default" not in text.replace("(defaults <", "")
    assert "[default: (" not in text


def test_up_says_its_defaults_and_lists_choices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(["up"], monkeypatch, capsys)
    assert _line(text, "--model").endswith("[default: minilm]")
    assert "MODEL" in _line(text, "--model")
    policy = text[text.index("--policy") :]
    assert "Choices: prefix, capacity, round-robin" in " ".join(policy.split())
    assert "SECONDS" in _line(text, "--startup-timeout")
    assert _line(text, "--startup-timeout").endswith("[default: 600]")
    assert "[auto|nvml|nvidia-smi|none]" in _line(text, "--discovery")
    assert "PORT" in _line(text, "--port")
    assert "PATH" in _line(text, "--config")
    for panel in ("What runs", "Devices", "Where it listens", "Supervision"):
        assert panel in text


def test_bench_and_generate_show_their_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _help(["bench"], monkeypatch, capsys)
    assert _line(bench, "--concurrency").endswith("[default: 8]")
    assert _line(bench, "--requests").endswith("[default: 200]")
    assert _line(bench, "--path").endswith("[default: /predict]")
    assert _line(bench, "--timeout").endswith("[default: 60]")
    assert "URL" in _line(bench, "URL")
    generate = _help(["generate"], monkeypatch, capsys)
    assert "URL" in _line(generate, "--endpoint")
    assert _line(generate, "--unavailable-timeout").endswith("[default: 30]")
    assert "[auto|bar|plain|none]" in _line(generate, "--progress")


#: Each command and the settings its options are generated from (``only``: some fields).
GENERATED: list[tuple[list[str], type[Any], tuple[str, ...] | None]] = [
    (["worker"], WorkerConfig, None),
    (["router"], RouterConfig, None),
    (["up"], FleetConfig, None),
    (["up"], RayConfig, None),
    (["generate"], ClientConfig, None),
    (["bench"], BenchConfig, None),
    (["monitor"], MonitorConfig, None),
    (["export"], FleetConfig, export_cmds._UP_FIELDS),
    (["export"], ExportOptions, None),
]


@pytest.mark.parametrize(
    ("args", "cls", "only"), GENERATED, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_each_setting_is_one_option_showing_its_default(
    args: list[str],
    cls: type[Any],
    only: tuple[str, ...] | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    entries = _entries(_help(args, monkeypatch, capsys))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    options = options_of(cls, only)
    assert options, f"{cls.__name__} has no flagged field"
    for name, option in options.items():
        listed = [e for opt, e in entries if opt == option.name]
        assert len(listed) == 1, f"{option.name} ({name}) listed {len(listed)} times"
        said = re.search(r"\[default: ([^\]]*)\]", listed[0])
        shown = shown_default(fields[name], option.names)
        assert (said.group(1) if said else None) == shown, f"{option.name}: {listed[0]}"


def _entries(text: str) -> list[tuple[str, str]]:
    """``--help``'s options: (first name, the whole entry on one line), in order."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        cells = line.split("│")
        if len(cells) < 3:
            continue
        words = " ".join(cells[1].split())
        first = words.lstrip("* ").split(" ")[0].split(",")[0]
        if first.startswith("-"):
            out.append((first, words))
        elif out and words and not first.startswith("-"):
            out[-1] = (out[-1][0], f"{out[-1][1]} {words}")
    return out


def test_defaults_shown_follow_the_settings_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(FleetConfig)}
    option = options_of(FleetConfig)["startup_timeout_s"]
    assert shown_default(fields["startup_timeout_s"], option.names) == "600"
    assert option.names == ("--startup-timeout",)
    assert options_of(WorkerConfig)["isolate_failures"].names == (
        "--isolate-failures/--no-isolate-failures",
    )
    worker_fields = {f.name: f for f in dataclasses.fields(WorkerConfig)}
    assert shown_default(worker_fields["isolate_failures"], ("--x/--no-x",)) == "x"
    router_fields = {f.name: f for f in dataclasses.fields(RouterConfig)}
    assert shown_default(router_fields["retry_lost"], ("--retry-lost/--no-retry-lost",)) == (
        "no-retry-lost"
    )
