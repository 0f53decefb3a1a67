"""``gpufleet bench`` end to end: the real CLI against a real router over two synthetic workers."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpufleet.operate.load import CUT_OFF
from gpufleet.testing import run_router, run_worker
from gpufleet.testing._process import ServerProcess


def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=cwd,
    )


def bench_json(*args: str, returncode: int = 0) -> dict[str, Any]:
    out = bench(*args, "--json")
    assert out.returncode == returncode, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def router() -> Iterator[ServerProcess]:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=10") as a,
        run_worker("synthetic", "--model-arg", "base_ms=10") as b,
        run_router([a.url, b.url]) as r,
    ):
        yield r


def served_by_worker(result: dict[str, Any]) -> dict[str, int]:
    return {s["id"]: s["served"] for s in result["shares"]}


def test_closed_loop_counts_and_shares(router: ServerProcess) -> None:
    result = bench_json(router.url, "--requests", "20", "--concurrency", "4")
    s = result["summary"]
    assert (result["mode"], result["is_router"]) == ("closed", True)
    assert (s["sent"], s["ok"], s["failed"], s["errors"]) == (20, 20, 0, {})
    assert s["throughput_rps"] > 0
    assert s["latency_ms"]["p50"] >= 10  # base_ms=10
    served = served_by_worker(result)
    assert sorted(served) == ["w0", "w1"]
    assert sum(served.values()) == s["ok"]
    assert all(n > 0 for n in served.values()), served  # four in flight over two workers
    assert sum(x["share"] for x in result["shares"]) == pytest.approx(1.0)


def test_open_loop_sends_the_seeded_arrivals(router: ServerProcess) -> None:
    result = bench_json(router.url, "--rate", "20", "--duration", "1", "--seed", "7")
    # The arrivals are Poisson from --seed: the same ones, counted here, are all sent.
    rng, due, expected = random.Random(7), 0.0, 0
    while due < 1.0:
        expected += 1
        due += rng.expovariate(20)
    s = result["summary"]
    assert result["mode"] == "open"
    assert (s["sent"], s["ok"], s["not_sent"]) == (expected, expected, 0)
    assert sum(served_by_worker(result).values()) == s["ok"]


def test_burst_sends_all_at_once(router: ServerProcess) -> None:
    result = bench_json(router.url, "--burst", "10")
    s = result["summary"]
    assert result["mode"] == "burst"
    assert (s["sent"], s["ok"]) == (10, 10)
    assert sum(served_by_worker(result).values()) == 10


def test_report_is_one_self_contained_html_file(router: ServerProcess, tmp_path: Path) -> None:
    out = bench(
        router.url, "--requests", "20", "--concurrency", "4", "--report", "x.html", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "report: x.html" in out.stdout
    html = (tmp_path / "x.html").read_text(encoding="utf-8")
    assert html.lower().startswith("<!doctype html>")
    assert html.rstrip().endswith("</html>")
    assert "<svg" in html
    # Nothing is fetched from anywhere: no linked script, style, image or font.
    assert not re.search(r"\b(src|href)\s*=|@import|url\(", html, re.I)


@pytest.mark.parametrize(
    "mode", [("--requests", "8", "--concurrency", "4"), ("--rate", "8"), ("--burst", "4")]
)
def test_max_duration_is_a_hard_bound(mode: tuple[str, ...]) -> None:
    # Each answer takes 30 s and --timeout allows 60: --max-duration 1 still ends the run
    # at 1 s, the unanswered requests cut off rather than awaited.
    with (
        run_worker("synthetic", "--model-arg", "base_ms=30000", "--drain-timeout", "1") as w,
        run_router([w.url]) as r,
    ):
        t0 = time.monotonic()
        # Nothing succeeded, so the exit status is 1 (with the JSON printed all the same).
        result = bench_json(r.url, *mode, "--timeout", "60", "--max-duration", "1", returncode=1)
        took = time.monotonic() - t0
    s = result["summary"]
    print(f"bench {' '.join(mode)} --max-duration 1: CLI took {took:.2f} s")
    # The CLI's start included (seconds on a loaded machine); waiting for an answer: 30 s.
    assert took < 15.0, took
    assert s["duration_s"] < 2.0
    assert s["sent"] >= 1
    assert s["ok"] == 0
    assert s["errors"] == {CUT_OFF: s["sent"]}
    assert result["settings"]["max_duration_s"] == 1.0
