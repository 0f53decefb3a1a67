"""`gpufleet export slurm`: `bash -n`, then the script run on a fake 2-node x 2-GPU allocation."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet.operate.export import ExportOptions, render
from tests.unit._export import POOLS_YAML, layout_of, write_config

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

FAKE_SCONTROL = """#!/bin/bash
[[ "$1 $2 $3" == "show hostnames node[1-2]" ]] || { echo "unexpected: $*" >&2; exit 1; }
printf 'node1\\nnode2\\n'
"""
# srun: drop the options, run the command "on" the node named by --nodelist.
FAKE_SRUN = """#!/bin/bash
node=""
while [[ "$1" == -* ]]; do
    case "$1" in --nodelist=*) node="${1#--nodelist=}" ;; esac
    shift
done
echo "$node" >> "$LOG.srun"
SLURMD_NODENAME="$node" exec "$@"
"""
# gpufleet: record who ran where with which GPU; the router waits for the 4 workers.
FAKE_GPUFLEET = """#!/bin/bash
echo "${SLURMD_NODENAME:-batch}|${CUDA_VISIBLE_DEVICES-unset}|$*" >> "$LOG"
if [[ "$1" == router ]]; then
    for _ in $(seq 1 200); do
        (( $(grep -c '|worker ' "$LOG") >= 4 )) && exit 0
        sleep 0.05
    done
    exit 1
fi
"""


def _script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.sh"
    path.write_text(text, encoding="utf-8")
    return path


def _tools(tmp_path: Path, **scripts: str) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, text in scripts.items():
        exe = folder / name.replace("_", "-")
        exe.write_text(text, encoding="utf-8")
        exe.chmod(0o755)
    return folder


def _run(script: Path, tools: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "GPUFLEET"))}
    base.pop("CUDA_VISIBLE_DEVICES", None)
    full = {
        **base,
        "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_GPUS_ON_NODE": "2",
        **env,
    }
    return subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=60, env=full, check=False
    )


def test_bash_syntax_and_sbatch_header(tmp_path: Path) -> None:
    config = write_config(tmp_path, POOLS_YAML)
    text = render("slurm", layout_of(config=config), ExportOptions(config_path=str(config)))
    script = _script(tmp_path, text)
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert text.startswith("#!/bin/bash\n")
    assert "#SBATCH --gres=gpu:4" in text.splitlines()
    assert "#SBATCH --ntasks-per-node=1" in text.splitlines()
    # Pools name positions in each node's GPU list: GPU 3 needs 4 allocated per node.
    text = render("slurm", layout_of({"gpus": "1,3"}), ExportOptions())
    assert "#SBATCH --gres=gpu:4" in text.splitlines()
    assert "##SBATCH --gres=gpu:4" in render("slurm", layout_of(), ExportOptions()).splitlines()


def test_dry_run_two_nodes_two_gpus(tmp_path: Path) -> None:
    layout = layout_of({"model": "synthetic", "policy": "capacity", "gpus": "2"})
    script = _script(tmp_path, render("slurm", layout, ExportOptions(config_path="/shared/f.yaml")))
    tools = _tools(tmp_path, scontrol=FAKE_SCONTROL)
    done = _run(script, tools, GPUFLEET_DRY_RUN="1", CUDA_VISIBLE_DEVICES="0,1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    sruns = [shlex.split(line) for line in lines if line.startswith("srun ")]
    assert [[a for a in s if a.startswith("--nodelist=")] for s in sruns] == [
        ["--nodelist=node1"],
        ["--nodelist=node2"],
    ]
    assert all("--gres=gpu:2" in s and s[-2:] == ["-c", "gpufleet_start_workers"] for s in sruns)
    workers = []
    for line in lines:
        node, _, command = line.partition(": ")
        argv = shlex.split(command)
        if "worker" in argv:
            cvd = next(a for a in argv if a.startswith("CUDA_VISIBLE_DEVICES="))
            workers.append((node, cvd.split("=", 1)[1], argv[argv.index("--port") + 1]))
            assert argv[argv.index("--host") + 1] == "0.0.0.0"
            assert argv[argv.index("--config") + 1] == "/shared/f.yaml"
            assert argv[argv.index("--model") + 1] == "synthetic"
    assert workers == [
        ("node1", "0", "8001"),
        ("node1", "1", "8002"),
        ("node2", "0", "8001"),
        ("node2", "1", "8002"),
    ]
    (router_line,) = [line for line in lines if " router " in line]
    node, _, command = router_line.partition(": ")
    assert node == "node1"
    argv = shlex.split(command)
    assert argv[:2] == ["gpufleet", "router"]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--worker"] == [
        "http://node1:8001",
        "http://node1:8002",
        "http://node2:8001",
        "http://node2:8002",
    ]
    assert argv[argv.index("--policy") + 1] == "capacity"
    assert argv[argv.index("--port") + 1] == "8000"


def test_dry_run_counts_gpus_from_slurm_when_no_mask(tmp_path: Path) -> None:
    layout = layout_of({"gpus": "all", "cpu_workers": 1})
    script = _script(tmp_path, render("slurm", layout, ExportOptions()))
    tools = _tools(tmp_path, scontrol=FAKE_SCONTROL)
    done = _run(script, tools, GPUFLEET_DRY_RUN="1", SLURM_GPUS_ON_NODE="3")
    assert done.returncode == 0, done.stderr
    node1 = [line for line in done.stdout.splitlines() if line.startswith("node1: env ")]
    assert [line.split()[2] for line in node1] == [f"CUDA_VISIBLE_DEVICES={i}" for i in range(3)]
    # No GPU on the nodes: the CPU workers of the settings, as `up` does.
    done = _run(script, tools, GPUFLEET_DRY_RUN="1", SLURM_GPUS_ON_NODE="0")
    assert done.returncode == 0, done.stderr
    cpu = [line for line in done.stdout.splitlines() if line.startswith("node2: env ")]
    assert len(cpu) == 1
    assert "--device cpu" in cpu[0]


def test_pools_per_node(tmp_path: Path) -> None:
    config = write_config(tmp_path, POOLS_YAML)
    script = _script(tmp_path, render("slurm", layout_of(config=config), ExportOptions()))
    tools = _tools(tmp_path, scontrol=FAKE_SCONTROL)
    done = _run(script, tools, GPUFLEET_DRY_RUN="1", CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert done.returncode == 0, done.stderr
    node2 = [
        shlex.split(line.partition(": ")[2])
        for line in done.stdout.splitlines()
        if line.startswith("node2: env ")
    ]
    # gpus "0,1" and "2,3" are positions in each node's list of allocated GPUs.
    assert [(a[1], a[a.index("--model") + 1]) for a in node2] == [
        ("CUDA_VISIBLE_DEVICES=4", "synthetic"),
        ("CUDA_VISIBLE_DEVICES=5", "synthetic"),
        ("CUDA_VISIBLE_DEVICES=6", "minilm"),
        ("CUDA_VISIBLE_DEVICES=7", "minilm"),
    ]
    router = shlex.split(done.stdout.splitlines()[-1].partition(": ")[2])
    urls = [router[i + 1] for i, a in enumerate(router) if a == "--worker"]
    assert urls[:2] == ["fast@http://node1:8001", "fast@http://node1:8002"]
    assert urls[2] == "http://node1:8003"
    assert router[router.index("--route") + 1] == "/fast=fast"


def test_runs_for_real_with_fake_srun(tmp_path: Path) -> None:
    layout = layout_of({"model": "synthetic", "gpus": "2"})
    script = _script(tmp_path, render("slurm", layout, ExportOptions()))
    tools = _tools(tmp_path, scontrol=FAKE_SCONTROL, srun=FAKE_SRUN, gpufleet=FAKE_GPUFLEET)
    log = tmp_path / "calls.log"
    done = _run(script, tools, CUDA_VISIBLE_DEVICES="0,1", LOG=str(log))
    assert done.returncode == 0, done.stderr + log.read_text()
    assert sorted(Path(f"{log}.srun").read_text().split()) == ["node1", "node2"]
    calls = [line.split("|", 2) for line in log.read_text().splitlines()]
    workers = sorted(
        (node, cvd, args.split()[args.split().index("--port") + 1])
        for node, cvd, args in calls
        if args.startswith("worker ")
    )
    assert workers == [
        ("node1", "0", "8001"),
        ("node1", "1", "8002"),
        ("node2", "0", "8001"),
        ("node2", "1", "8002"),
    ]
    (router,) = [args for _, _, args in calls if args.startswith("router ")]
    assert router.count("--worker http://node") == 4
