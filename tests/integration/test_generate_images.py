"""Prompts in, PNG files out, with the ``image-demo`` model; the same bytes whoever served.

The fleet variant (``gpufleet up --model image-demo``) lives in
``test_generate_fleet.py``; here two workers stand in for two GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gpufleet.testing import run_worker

PROMPTS = [f"a {w} landscape, study {i}" for i, w in enumerate(["night", "ocean", "forest"] * 4)]


def _generate(prompts: Path, out: Path, urls: list[str], *extra: str) -> None:
    cmd = [sys.executable, "-m", "gpufleet", "generate", "-f", str(prompts), "-o", str(out)]
    cmd += ["--seed", "42", "--progress", "none", *extra]
    cmd += [a for u in urls for a in ("--endpoint", u)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}


@pytest.mark.parametrize("path", ["/predict", "/v1/images/generations"])
def test_prompts_become_png_files_independent_of_the_endpoint(tmp_path: Path, path: str) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = ["--model-arg", "width=64", "--model-arg", "height=48"]
    with run_worker("image-demo", *args) as w1, run_worker("image-demo", *args) as w2:
        _generate(prompts, tmp_path / "a", [w1.url, w2.url], "--path", path)
        _generate(prompts, tmp_path / "b", [w2.url], "--path", path)
    first, second = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    assert len(first) == len(PROMPTS)
    for name, data in first.items():
        with Image.open(tmp_path / "a" / name) as img:
            img.verify()
        with Image.open(tmp_path / "a" / name) as img:
            assert img.format == "PNG"
            assert img.size == (64, 48)
        assert data == second[name], f"{name} depends on the endpoint that served it"
    served = json.loads((tmp_path / "a" / "summary.json").read_text())["endpoints"]
    assert all(v["served"] > 0 for v in served.values())
    assert len(set(first.values())) == len(PROMPTS)  # seed + i: every item its own image
