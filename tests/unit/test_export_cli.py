"""`gpufleet export` on the command line: settings from flags, env and file; GPUs as found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit._export import QUERY

FAKE_NVIDIA_SMI = (
    '#!/bin/sh\ncase "$*" in *--query-gpu=*) ;; *) exit 2 ;; esac\ncat <<EOF\n' + QUERY + "EOF\n"
)


def _export(*args: str, path: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    for key in ("GPU_IDS", "CUDA_VISIBLE_DEVICES"):
        base.pop(key, None)
    if path is not None:
        base["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", "export", *args],
        capture_output=True, text=True, timeout=60, env={**base, **env}, check=False,
    )  # fmt: skip


def test_gpus_found_by_nvidia_smi_env_and_output_file(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    smi = tools / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI, encoding="utf-8")
    smi.chmod(0o755)
    out = tmp_path / "compose.yaml"
    done = _export(
        "compose", "--model", "synthetic", "--discovery", "nvidia-smi", "-o", str(out),
        path=f"{tools}{os.pathsep}{os.environ['PATH']}",
        GPU_IDS="1,3", GPUFLEET_WORKER_BASE_PORT="9100",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(out.read_text())["services"]
    assert list(services) == ["worker-gpu1", "worker-gpu3", "router"]
    ids = [
        s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for name, s in services.items()
        if name != "router"
    ]
    assert ids == [["1"], ["3"]]
    assert services["worker-gpu3"]["command"][-1] == "9101"
    assert "nvidia-smi" in out.read_text().splitlines()[1]


def test_flags_beat_the_file_and_bad_input_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("fleet:\n  model: synthetic\n  gpus: '0,1'\n  port: 7000\n")
    done = _export("systemd", "--config", str(config), "--port", "7100", "--name", "gf")
    assert done.returncode == 0, done.stderr
    assert f"up --config {config} --port 7100" in done.stdout
    assert "behind 127.0.0.1:7100" in done.stdout
    assert _export("docker", "--config", str(config)).returncode == 2
    bad = _export("nginx", "--gpus", "zero")
    assert bad.returncode == 2
    assert "gpus" in bad.stderr


def test_systemd_runs_up_with_the_up_flags_given(tmp_path: Path) -> None:
    done = _export(
        "systemd", "--model", "synthetic", "--model-arg", "dim=8", "--model-arg", "x=y",
        "--worker-arg", "--max-queue=9", "--port", "7200", "--drain-timeout", "5",
        "--gpus", "none", "--name", "gf", "--image", "not-for-systemd", "--batch-store", "/srv/b",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    exec_start = next(line for line in done.stdout.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(
        "up --model synthetic --model-arg dim=8 --model-arg x=y --gpus none --port 7200"
        " --batch-store /srv/b --worker-arg --max-queue=9 --drain-timeout 5.0"
    )
    assert "not-for-systemd" not in exec_start
    assert "--name" not in exec_start  # export's own options stay out of up's command line


def test_systemd_carries_the_environment_settings_are_read_from() -> None:
    done = _export(
        "systemd", "--gpus", "none", GPU_IDS="1,3", GPUFLEET_MAX_QUEUE="9",
        GPUFLEET_ADMIN_TOKEN="secret-token", CUDA_VISIBLE_DEVICES="1,3", OTHER_VAR="x",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    env = [line for line in done.stdout.splitlines() if line.startswith("Environment=")]
    said = " ".join(env)
    for kept in ("GPU_IDS=1,3", "GPUFLEET_MAX_QUEUE=9", "CUDA_VISIBLE_DEVICES=1,3"):
        assert kept in said, said
    assert "secret-token" not in done.stdout
    assert "OTHER_VAR" not in said
