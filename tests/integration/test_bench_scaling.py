"""``gpufleet bench --scaling`` on a real router: steps, drains, and the pool put back."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from gpufleet.testing import run_router, run_worker

TOKEN = "token-for-tests"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def test_scaling_drains_one_by_one_and_restores_the_same_workers() -> None:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=10") as a,
        run_worker("synthetic", "--model-arg", "base_ms=10") as b,
        run_router([a.url, b.url], "--admin-token", TOKEN) as router,
    ):
        before = get_json(router.url + "/stats")["workers"]
        args = [
            sys.executable, "-m", "gpufleet", "bench", router.url, "--scaling",
            "--admin-token", TOKEN, "--requests", "40", "--concurrency", "4", "--json",
        ]  # fmt: skip
        out = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        after = get_json(router.url + "/stats")["workers"]

    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    steps = {s["workers"]: s for s in result["scaling"]}
    assert sorted(steps) == [1, 2]
    assert steps[2]["worker_ids"] == ["w0", "w1"]
    assert steps[1]["worker_ids"] == ["w0"]
    assert all(s["summary"]["ok"] == 40 for s in steps.values())
    # Efficiency is the 2-worker throughput over twice the 1-worker one, as reported.
    one, two = steps[1]["throughput_rps"], steps[2]["throughput_rps"]
    assert min(one, two) > 0
    assert steps[2]["efficiency"] == pytest.approx(two / (2 * one))
    assert steps[2]["throughput_rps"] == steps[2]["summary"]["throughput_rps"]
    assert not [n for n in result["notes"] if "re-add" in n or "not healthy" in n]
    # The fleet ends as it began: the same ids, every one ready again, none added twice.
    assert [(w["id"], w["url"]) for w in after] == [(w["id"], w["url"]) for w in before]
    assert [w["state"] for w in after] == ["ready", "ready"]
    # While w1 was drained it got nothing: all it served is its share of the 2-worker step.
    share = {s["id"]: s["served"] for s in result["shares"]}
    # The shares are the 2-worker step's: both workers served part of its 40.
    assert sum(share.values()) == 40
    assert sorted(share) == ["w0", "w1"]
    assert min(share.values()) > 0, share
    served = {w["id"]: w["served"] for w in after}
    assert served["w1"] == share["w1"]
    assert served["w0"] == share["w0"] + 40
