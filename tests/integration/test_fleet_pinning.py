"""`gpufleet up --cmd …` on a fake 4-GPU machine: each process sees exactly its GPU."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from gpufleet.testing import run_server
from tests.integration._fleet import UUIDS, echo_server, fake_nvidia_smi, path_with

CASES = [
    pytest.param([], {}, ["0", "1", "2", "3"], id="all"),
    pytest.param(["--gpus", "1,3"], {}, ["1", "3"], id="--gpus"),
    pytest.param([], {"GPU_IDS": "1,3"}, ["1", "3"], id="GPU_IDS"),
    pytest.param([], {"CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"], id="inherited-mask"),
    pytest.param(
        ["--gpus", "1,"],
        {"CUDA_VISIBLE_DEVICES": f"{UUIDS[3]},{UUIDS[0]}"},
        [UUIDS[0]],
        id="uuid-mask",
    ),
]


@pytest.mark.parametrize(("args", "env", "expected"), CASES)
def test_each_process_gets_its_gpu(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: list[str]
) -> None:
    out = tmp_path / "seen"
    out.mkdir()
    script = echo_server(tmp_path)
    cmd = f"{shlex.quote(sys.executable)} {script} {{port}} {out} {{index}} {{gpu}}"
    full_env = {"PATH": path_with(fake_nvidia_smi(tmp_path / "bin")), **env}
    flags = ["up", "--cmd", cmd, "--discovery", "nvidia-smi", *args]
    with run_server(flags, env=full_env, cwd=tmp_path) as fleet:
        records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
        # Worker k ({index} counts the workers) got exactly the k-th selected GPU.
        seen = {r["index"]: r["cvd"] for r in records}
        assert len(records) == len(expected), fleet.log()
        assert seen == {str(k): cvd for k, cvd in enumerate(expected)}, fleet.log()
        assert "GPU(s) found via nvidia-smi" in fleet.log()
        assert "ready at http://127.0.0.1:" in fleet.log()
