"""On a real GPU: a worker's /stats carries NVML readings, and the monitor shows them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from gpufleet.testing import run_router, run_worker


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def test_worker_reports_its_own_gpu() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    with run_worker("synthetic", "--device", "cuda", env=env) as w, run_router([w.url]) as r:
        deadline = time.monotonic() + 30
        while "gpu" not in (stats := get_json(w.url + "/stats")):
            assert time.monotonic() < deadline, stats
            time.sleep(0.5)
        monitor = subprocess.run(
            [sys.executable, "-m", "gpufleet", "monitor", r.url, "--once", "--interval", "0.3"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        dashboard = get_json(r.url + "/dashboard/stats")
    gpu = stats["gpu"]
    assert gpu["index"] == 0  # physical GPU 0: the one CUDA_VISIBLE_DEVICES names
    assert gpu["name"]
    assert gpu["uuid"].startswith(("GPU-", "MIG-"))
    assert gpu["memory_total_mb"] > 0
    assert 0 <= gpu["memory_used_mb"] <= gpu["memory_total_mb"]
    if "utilization_pct" in gpu:  # MIG slices do not report it
        assert 0 <= gpu["utilization_pct"] <= 100
    (entry,) = dashboard["workers"]
    assert entry["worker"]["gpu"]["uuid"] == gpu["uuid"]
    assert monitor.returncode == 0, monitor.stderr
    assert "GiB" in monitor.stdout  # the GPU memory column is filled
