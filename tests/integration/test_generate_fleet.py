"""End to end: 20 prompts through `gpufleet up --model image-demo` become 20 PNG files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from PIL import Image

from gpufleet.testing import run_server


def test_twenty_prompts_through_the_fleet_become_twenty_pngs(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    moods = ["night", "sunset", "forest", "ocean", "desert"]
    prompts.write_text("".join(f"a {moods[i % 5]} landscape, number {i}\n" for i in range(20)))
    out = tmp_path / "out"
    up = ["up", "--model", "image-demo", "--model-arg", "width=96", "--model-arg", "height=64"]
    up += ["--gpus", "none", "--cpu-workers", "2", "--log-dir", str(tmp_path / "logs")]
    up += ["--run-dir", str(tmp_path / "run")]
    with run_server(up, cwd=tmp_path) as fleet:
        cmd = [sys.executable, "-m", "gpufleet", "generate", "-f", str(prompts), "-o", str(out)]
        cmd += ["-e", fleet.url, "--seed", "7", "--progress", "plain", "-v"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
        with urllib.request.urlopen(fleet.url + "/stats", timeout=10) as r:
            stats = json.loads(r.read())
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["succeeded"] == 20
    # The router URL is sized by the workers behind it: the sum of the router's caps.
    slots = sum(w["max_outstanding"] for w in stats["workers"])
    assert slots > 4, stats
    assert f"is a router over 2 workers: {slots} slots" in done.stderr
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:06d}" for i in range(1, 21)]
    for png in pngs:
        with Image.open(png) as img:
            img.verify()
        with Image.open(png) as img:
            assert (img.format, img.size) == ("PNG", (96, 64))
            img.load()
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records} == {"ok"}
    assert len({r["upstream"] for r in records}) == 2, "one worker served everything"
