"""``--help`` reads like the tools people know: plain metavars, one way of showing
defaults (``[default: X]``, from the settings themselves), choices listed (issue 14)."""

from __future__ import annotations

import re
import sys

import pytest

from gpufleet.cli.main import main

COMMANDS = [
    ["up"],
    ["worker"],
    ["router"],
    ["generate"],
    ["bench"],
    ["monitor"],
    ["down"],
    ["status"],
    ["export"],
    ["config", "show"],
    [],
]


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
