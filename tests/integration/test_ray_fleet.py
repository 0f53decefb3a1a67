"""`gpufleet up --ray` on a local Ray cluster with fake GPUs; where workers run, in /stats.

The Ray test starts one head node (`ray start --head --num-gpus 2`) for the module, runs
the fleet on it with the synthetic model, and stops the cluster at the end. Every address
stays on loopback: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` makes Ray take 127.0.0.1 as the
node's address instead of the machine's own.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gpufleet.testing import run_router, run_server
from gpufleet.testing.upstreams import run_upstream
from tests.integration._fleet import wait_state

FAST = ["--model", "synthetic", "--model-arg", "base_ms=5", "--model-arg", "per_item_ms=1"]
TOKEN = "test-token-ray"


def _get(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.loads(r.read())


def _post(url: str, body: Any, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def test_router_keeps_the_labels_the_admin_api_gives() -> None:
    env = {"GPUFLEET_ADMIN_TOKEN": TOKEN}
    with run_upstream() as upstream, run_router([upstream.url], env=env) as router:
        admin = router.url + "/admin/workers"
        where = {"node": "10.0.0.7", "gpu": "3"}
        status, added = _post(admin, {"url": "http://127.0.0.1:9", "labels": where}, TOKEN)
        assert (status, added["labels"]) == (201, where)
        moved = {"node": "10.0.0.8", "gpu": "1"}
        status, again = _post(admin, {"url": "http://127.0.0.1:9", "labels": moved}, TOKEN)
        assert (status, again["id"], again["labels"]) == (200, added["id"], moved)
        by_url = {w["url"]: w for w in _get(router.url + "/stats")["workers"]}
        assert by_url["http://127.0.0.1:9"]["labels"] == moved
        assert by_url[upstream.url.rstrip("/")]["labels"] == {}
        bad = {"url": "http://127.0.0.1:10", "labels": {"gpu": 3}}
        assert _post(admin, bad, TOKEN)[0] == 400
        assert _post(admin, {"url": "http://127.0.0.1:10", "labels": ["x"]}, TOKEN)[0] == 400


def _router_labels(url: str) -> dict[str, dict[str, str]]:
    stats = _get(url + "/stats")
    return {w["url"]: w["labels"] for w in stats["workers"] if w["state"] == "ready"}


def _wait(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_a_local_fleet_tells_the_router_where_each_worker_runs(tmp_path: Path) -> None:
    with run_server(["up", *FAST, "--cpu-workers", "2"], cwd=tmp_path) as fleet:
        state = wait_state(tmp_path, lambda s: all(w["state"] == "ready" for w in s["workers"]))
        urls = {w["url"] for w in state["workers"]}
        # The router starts with --worker URL (no labels); the fleet's next sync adds them.
        labelled = _wait(
            lambda: (
                (seen := _router_labels(fleet.url)).keys() == urls and all(seen.values()) and seen
            )
        )
        assert labelled, _get(fleet.url + "/stats")
        assert {labels["device"] for labels in labelled.values()} == {"cpu"}
        assert sorted(labels["index"] for labels in labelled.values()) == ["0", "1"]
