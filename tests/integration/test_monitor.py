"""``gpufleet monitor --once [--errors]`` against real routers and workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gpufleet.testing import run_router, run_server, run_worker
from tests.integration._fleet import get_json, table_row


def monitor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", "monitor", *args, "--interval", "0.3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def post(url: str, body: object) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return exc.code


HEAD = ["worker", "device", "state", "in-flight", "queue", "served", "errors", "req/s"]


def test_monitor_once_and_errors_against_a_router() -> None:
    with (
        run_worker("synthetic", "--model-arg", "fail_on=bad", "--model-arg", "base_ms=1") as a,
        run_worker("synthetic", "--model-arg", "base_ms=1") as b,
        run_router([a.url, b.url]) as router,
    ):
        statuses = [post(router.url + "/predict", {"input": i}) for i in range(10)]
        assert statuses == [200] * 10
        # Straight to worker a, so the two failures are known to be its own.
        bad = [post(a.url + "/predict", {"input": "bad"}) for _ in range(2)]
        assert bad == [500, 500]
        stats = get_json(router.url + "/stats")
        plain = monitor(router.url, "--once")
        errors = monitor(router.url, "--once", "--errors")

    assert plain.returncode == 0, plain.stderr
    out = plain.stdout
    assert f"{router.url} · 2 worker(s)" in out
    served = {w["id"]: w["served"] for w in stats["workers"]}
    assert sum(served.values()) == 10
    for w in stats["workers"]:
        cells = table_row(out, w["id"])
        named = dict(zip(HEAD, cells, strict=False))
        assert named["device"] == "cpu"  # from the worker's own /stats
        assert named["state"] == "ready"
        assert int(named["served"]) == w["served"]
        assert named["queue"] == "0"
        assert cells[-2:] == ["-", "-"]  # no GPU here: no GPU numbers
    assert "ModelError" not in out  # errors are listed only with --errors

    assert errors.returncode == 0, errors.stderr
    sections = errors.stdout.split(f"({a.url})")
    assert len(sections) == 2, errors.stdout
    a_errors = sections[1].split(f"({b.url})")[0]
    assert a_errors.count("ModelError") == 2
    assert "synthetic failure: input 'bad'" in a_errors
    assert "no recent errors" in errors.stdout.split(f"({b.url})")[1]


def test_monitor_once_against_a_lone_worker_and_a_dead_upstream() -> None:
    with run_worker("synthetic", "--model-arg", "base_ms=1") as a:
        for i in range(3):
            assert post(a.url + "/predict", {"input": i}) == 200
        lone = monitor(a.url, "--once", "--errors")
        with run_worker("synthetic") as b, run_router([a.url, b.url]) as router:
            b.kill()
            dead = monitor(router.url, "--once", "--errors")

    assert lone.returncode == 0, lone.stderr
    name = a.url.split("://", 1)[1]
    named = dict(zip(HEAD, table_row(lone.stdout, name), strict=False))
    assert named["served"] == "3"
    assert named["state"] == "ready"
    assert "no recent errors" in lone.stdout

    # A worker that died: the monitor still draws the fleet and says why it cannot read it.
    assert dead.returncode == 0, dead.stderr
    assert "stats unreadable" in dead.stdout.split(f"({b.url})")[1]


def test_monitor_once_says_when_nothing_answers() -> None:
    with run_worker("synthetic") as a:
        url = a.url
    result = monitor(url, "--once")
    assert result.returncode == 1
    assert "gpufleet: error:" in result.stderr
    assert url in result.stderr


def test_monitor_once_against_a_fleet(tmp_path: Path) -> None:
    args = ["up", "--model", "synthetic", "--model-arg", "base_ms=1", "--cpu-workers", "2"]
    with run_server(args, cwd=tmp_path) as fleet:
        deadline = time.monotonic() + 60
        while [w["state"] for w in get_json(fleet.url + "/stats")["workers"]] != ["ready"] * 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for i in range(6):
            assert post(fleet.url + "/predict", {"input": i}) == 200
        stats = get_json(fleet.url + "/stats")
        result = monitor(fleet.url, "--once", "--errors")

    assert result.returncode == 0, result.stderr
    assert f"{fleet.url} · 2 worker(s)" in result.stdout
    for w in stats["workers"]:
        named = dict(zip(HEAD, table_row(result.stdout, w["id"]), strict=False))
        assert named["device"] == "cpu"  # the fleet's label and the worker's own agree
        assert int(named["served"]) == w["served"]
    assert sum(w["served"] for w in stats["workers"]) == 6
    assert result.stdout.count("no recent errors") == 2
