"""The fleet keeps the router's pool in step: its own drains only, stale addresses removed.

The first test drives :class:`PoolSync` against a real router and real workers (the
clock of the stale-drain bound is a plain variable); the second takes a ``gpufleet up``
fleet through an operator's drain, a SIGKILLed worker, ``monitor --once`` and
``bench --scaling``.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpufleet.fleet.admin import Membership, PoolSync
from gpufleet.testing import run_router, run_server, run_worker
from gpufleet.wire.http import PeerClient
from tests.integration._fleet import gpufleet, post, table_row, wait_state
from tests.integration.test_dashboard import Browser, cells, needs_chromium, rows_of

TOKEN = "token-for-sync-tests"
#: Nothing listens there: where a member "moved" to.
ELSEWHERE = "http://127.0.0.1:9"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _call(method: str, url: str, token: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _by_url(router: str) -> dict[str, dict[str, Any]]:
    return {w["url"]: w for w in _get(router + "/stats")["workers"]}


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


async def test_sync_undoes_only_its_own_drains_and_removes_stale_addresses() -> None:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=1") as a,
        run_worker("synthetic", "--model-arg", "hang_on=hang", "--model-arg", "hang_s=60") as c,
        run_router([a.url], "--admin-token", TOKEN) as router,
        ThreadPoolExecutor(1) as pool,
    ):
        url_a, url_c = a.url.rstrip("/"), c.url.rstrip("/")
        now = [0.0]
        async with PeerClient() as http:
            sync = PoolSync(http, TOKEN, stale_drain_s=10.0, clock=lambda: now[0])
            up = {"fleet_state": "ready", "restarts": "0"}
            members = [
                Membership(url_a, "default", True, up),
                Membership(url_c, "default", True, up),
            ]
            done = await sync.sync(router.url, members)
            assert (done.admitted, done.drained, done.removed) == (1, 0, 0)
            _until(lambda: _by_url(router.url)[url_c]["state"] == "ready", "c never ready")
            assert _by_url(router.url)[url_a]["labels"] == up  # started with --worker: no labels

            # An operator drains a: the fleet's next sync leaves that alone.
            a_id = _by_url(router.url)[url_a]["id"]
            _call("POST", f"{router.url}/admin/workers/{a_id}/drain", TOKEN)
            assert not (await sync.sync(router.url, members)).changed
            assert _by_url(router.url)[url_a]["state"] == "draining"

            # c's member goes down: drained, saying why; back up: the fleet re-admits it.
            down = {"fleet_state": "crash-looping", "restarts": "3"}
            gone = [members[0], Membership(url_c, "default", False, down)]
            assert (await sync.sync(router.url, gone)).drained == 1
            entry = _by_url(router.url)[url_c]
            assert (entry["state"], entry["labels"]) == ("draining", down)
            assert (await sync.sync(router.url, members)).admitted == 1
            _until(lambda: _by_url(router.url)[url_c]["state"] == "ready", "c not re-admitted")
            assert _by_url(router.url)[url_a]["state"] == "draining"  # still the operator's

            # A request hangs on c (the only serving worker); then c's member moves away.
            hung = pool.submit(post, router.url + "/predict", {"input": "hang"}, 90)
            _until(lambda: _by_url(router.url)[url_c]["in_flight"] == 1, "no request on c")
            moved = [members[0], Membership(ELSEWHERE, "default", False)]
            done = await sync.sync(router.url, moved)
            assert (done.drained, done.removed, done.pending) == (1, 0, True)
            assert _by_url(router.url)[url_c]["state"] == "draining"  # its request finishes
            now[0] = 5.0
            assert (await sync.sync(router.url, moved)).pending
            now[0] = 10.5  # past the bound: removed although a request is still in it
            done = await sync.sync(router.url, moved)
            assert (done.removed, done.pending) == (1, False)
            assert url_c not in _by_url(router.url)
            assert url_c not in sync.managed

            # An idle stale address goes at once (a is idle: its member is gone too).
            done = await sync.sync(router.url, [Membership(ELSEWHERE, "default", False)])
            assert (done.removed, done.pending) == (1, False)
            assert _by_url(router.url) == {}
            assert sync.managed == {ELSEWHERE}
        c.kill()  # its hung request fails now rather than after 60 s
        assert hung.result(timeout=30)[0] != 200


@needs_chromium
async def test_the_dashboard_shows_the_restarts_the_fleet_counted(tmp_path: Path) -> None:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=1") as a,
        run_router([a.url], "--admin-token", TOKEN) as router,
    ):
        # What a fleet's sync sets after three restarts (none of which this page saw).
        labels = {"restarts": "3", "fleet_state": "ready"}
        entry = _call(
            "POST", router.url + "/admin/workers", TOKEN, {"url": a.url, "labels": labels}
        )
        async with Browser(tmp_path / "profile") as browser:
            html = await browser.open(router.url + "/dashboard", polls=1)
            errors = browser.errors
    assert errors == []
    assert cells(rows_of(html)[entry["id"]])["restarts"] == "3"


def _token(run_dir: Path) -> str:
    return (run_dir / ".gpufleet" / "private" / "admin-token").read_text().strip()


def test_a_fleet_respects_a_drain_counts_restarts_and_bench_scales(tmp_path: Path) -> None:
    args = ["up", "--model", "synthetic", "--model-arg", "base_ms=5", "--cpu-workers", "2"]
    with run_server([*args, "--restart-backoff", "0.2"], cwd=tmp_path) as fleet:
        state = wait_state(tmp_path, lambda s: all(w["state"] == "ready" for w in s["workers"]))
        kept, victim = state["workers"]
        _until(
            lambda: all("fleet_state" in w["labels"] for w in _by_url(fleet.url).values()),
            "the fleet never labelled its workers",
        )
        token = _token(tmp_path)
        admin = fleet.url + "/admin/workers"
        drained = _by_url(fleet.url)[kept["url"]]
        _call("POST", f"{admin}/{drained['id']}/drain", token)

        # The other worker dies and comes back: two resyncs of the pool.
        os.kill(victim["pid"], signal.SIGKILL)
        wait_state(
            tmp_path,
            lambda s: any(
                w["name"] == victim["name"] and w["state"] == "ready" and w["restarts"] == 1
                for w in s["workers"]
            ),
        )
        back = _until(
            lambda: (
                (w := _by_url(fleet.url)[victim["url"]])["state"] == "ready"
                and w["labels"].get("restarts") == "1"
                and w
            ),
            "the restarted worker was not re-admitted with its restarts",
        )
        assert _by_url(fleet.url)[kept["url"]]["state"] == "draining"  # the operator's drain

        # A fresh monitor (no pid change seen) shows the fleet's count.
        seen = gpufleet(tmp_path, "monitor", fleet.url, "--once", "--interval", "0.2", check=False)
        assert seen.returncode == 0, seen.stderr
        head = ["worker", "device", "state", "in-flight", "queue", "served", "errors", "req/s"]
        head += ["p50 ms", "p99 ms", "batch", "restarts"]
        rows = {
            w["id"]: dict(zip(head, table_row(seen.stdout, w["id"]), strict=False))
            for w in (back, drained)
        }
        assert rows[back["id"]]["restarts"] == "1", seen.stdout
        assert rows[drained["id"]]["restarts"] == "0", seen.stdout

        # Back to two workers; bench --scaling (token from the run dir) drains one itself.
        _call("POST", admin, token, {"url": kept["url"]})
        _until(lambda: _by_url(fleet.url)[kept["url"]]["state"] == "ready", "not re-added")
        before = {w["id"]: w["served"] for w in _get(fleet.url + "/stats")["workers"]}
        bench = ["bench", fleet.url, "--scaling", "--requests", "20", "--concurrency", "2"]
        out = gpufleet(tmp_path, *bench, "--json", check=False)
        after = _get(fleet.url + "/stats")["workers"]
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    steps = {s["workers"]: s for s in result["scaling"]}
    assert sorted(steps) == [1, 2]
    assert all(s["summary"]["ok"] == 20 for s in steps.values())
    (alone,) = steps[1]["worker_ids"]
    other = next(i for i in steps[2]["worker_ids"] if i != alone)
    # While drained by bench, the other worker got nothing: all it served is its share of
    # the 2-worker step, and every request of the 1-worker step went to the one left.
    share = {s["id"]: s["served"] for s in result["shares"]}
    served = {w["id"]: w["served"] for w in after}
    assert served[other] == before[other] + share[other]
    assert served[alone] == before[alone] + share[alone] + 20
    assert [w["state"] for w in after] == ["ready", "ready"]
