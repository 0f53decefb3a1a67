"""`gpufleet export systemd`: a unit running `gpufleet up`, checked by systemd or by parsing."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.operate.export import ExportOptions, render
from tests.unit._export import POOLS_YAML, layout_of, write_config


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """``[Section]`` -> key -> values (a key may repeat, like Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.setdefault(key, []).append(value)
    return sections


def _unit(tmp_path: Path, **flags: object) -> tuple[str, ExportOptions]:
    config = write_config(tmp_path, POOLS_YAML)
    opts = ExportOptions(
        exe=(sys.executable, "-m", "gpufleet"),
        config_path=str(config),
        up_args=("--policy", "least-outstanding", "--detach"),
        env={"GPUFLEET_MAX_WAIT_MS": "7", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
        workdir=str(tmp_path),
        user="gpufleet",
    )
    layout = layout_of(dict(flags) or None, config=config)
    return render("systemd", layout, opts), opts


def test_unit_runs_up_with_restart_and_graceful_stop(tmp_path: Path) -> None:
    text, opts = _unit(tmp_path, drain_timeout_s=20)
    unit = parse_unit(text)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {k: v[-1] for k, v in unit["Service"].items()}
    argv = shlex.split(service["ExecStart"])
    assert argv[:4] == [sys.executable, "-m", "gpufleet", "up"]
    assert argv[4:6] == ["--config", opts.config_path]
    # The flags given to export, but never --detach: systemd watches the foreground process.
    assert argv[6:] == ["--policy", "least-outstanding"]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    # Two drain stages (router, then workers) and the kill wait fit before systemd's SIGKILL.
    assert int(service["TimeoutStopSec"]) >= 2 * 20 + 10
    assert service["WorkingDirectory"] == str(tmp_path)
    assert service["User"] == "gpufleet"
    env = dict(shlex.split(v)[0].split("=", 1) for v in unit["Service"]["Environment"])
    assert env["GPUFLEET_MAX_WAIT_MS"] == "7"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_exec_start_quotes_and_escapes(tmp_path: Path) -> None:
    opts = ExportOptions(exe=("/opt/my env/python", "-m", "gpufleet"), up_args=("--cmd", "a 50%"))
    text = render("systemd", layout_of({"cpu_workers": 1}), opts)
    exec_start = parse_unit(text)["Service"]["ExecStart"][0]
    assert exec_start.startswith('"/opt/my env/python" -m gpufleet up --cmd "a 50%%"')


def test_file_detach_is_overridden(tmp_path: Path) -> None:
    config = write_config(tmp_path, "fleet:\n  detach: true\n  cpu_workers: 1\n")
    text = render("systemd", layout_of(config=config), ExportOptions())
    assert 'Environment="GPUFLEET_DETACH=false"' in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    text, _ = _unit(tmp_path)
    path = tmp_path / "gpufleet.service"
    # User= names an account that may not exist here; systemd-analyze checks the rest.
    path.write_text(text.replace("User=gpufleet\n", ""), encoding="utf-8")
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    # verify exits 0 on settings it ignores; what it says about the file counts too.
    complaints = [line for line in done.stderr.splitlines() if path.name in line]
    assert done.returncode == 0, done.stderr
    assert not complaints, done.stderr
    bad = tmp_path / "bad.service"
    bad.write_text(text.replace("KillMode=mixed", "KillMode=sometimes"), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(bad)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert "kill mode" in done.stderr.lower()
