"""`gpufleet up --ray` on a local Ray cluster with fake GPUs; where workers run, in /stats.

The Ray tests start one head node (`ray start --head --num-gpus 2`) for the module, run
the fleet on it with the synthetic model, add a second node to lose one, and stop the
cluster at the end. Every address stays on loopback: each node gets its own 127.0.0.x
(Ray would turn 127.0.0.1 itself into the machine's address).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gpufleet.testing import run_router, run_server
from gpufleet.testing.upstreams import run_upstream
from tests.integration._fleet import is_alive, post, wait_state

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


_PARENT = """
import subprocess, sys, time
from gpufleet.fleet.ray_actor import death_signal_setter
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
child = subprocess.Popen(sleeper, preexec_fn=death_signal_setter())
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_worker_dies_with_the_actor_that_started_it(tmp_path: Path) -> None:
    script = tmp_path / "actor.py"
    script.write_text(_PARENT)
    actor = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert actor.stdout is not None
        child = int(actor.stdout.readline())
        assert is_alive(child)
        actor.kill()
        actor.wait(timeout=10)
        # Orphaned, it would sleep on (and hold its GPU); the death signal ends it.
        assert _wait(lambda: not is_alive(child), timeout=10), f"pid {child} outlived its parent"
    finally:
        actor.kill()
        actor.wait(timeout=10)
        if actor.stdout is not None:
            actor.stdout.close()


HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
# The head declares a node dead after 3 failed health checks 1 s apart (Ray's defaults:
# 5, 3 s apart), so a lost node is noticed in seconds; each check still waits Ray's
# default 10 s for an answer, so a slow but live node is not declared dead.
HEAD_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="needs Ray: pip install 'gpufleet[ray]'"
)


def _ray(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("ray")), *args],
        env={**os.environ, **RAY_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline and is_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster with two fake GPUs; its address. Stopped (all of it) after."""
    # Short: Ray's socket paths live under it and must stay below 108 bytes.
    temp = tempfile.mkdtemp(prefix="gfray", dir="/tmp")
    try:
        started = _ray(
            "start",
            "--head",
            "--port=0",
            f"--node-ip-address={HEAD_IP}",
            "--num-gpus=2",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--object-store-memory=100000000",
            f"--temp-dir={temp}",
            env=HEAD_ENV,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        yield (Path(temp) / "ray_current_cluster").read_text().strip()
    finally:
        _ray("stop", "--force")
        # SIGKILLed processes may still be exiting (and writing) for a moment.
        left = _wait(lambda: not _processes_mentioning(temp), timeout=15) or (
            _processes_mentioning(temp)
        )
        shutil.rmtree(temp, ignore_errors=True)
        assert left is True, f"Ray processes left behind: {left}"


def _ready_workers(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in state.get("workers", []) if w["state"] == "ready"]


def _served_by(url: str, n: int) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post(f"{url}/predict", {"input": i}), range(n)))
    assert {status for status, _ in answers} == {200}, answers
    return [body["output"] for _, body in answers]


@needs_ray
@pytest.mark.ray
def test_up_on_ray_pins_a_gpu_per_actor_serves_and_survives_a_killed_actor(
    ray_cluster: str, tmp_path: Path
) -> None:
    args = ["up", "--ray-address", ray_cluster, *FAST, "--restart-backoff", "0.2"]
    with run_server(args, cwd=tmp_path, env=RAY_ENV, timeout=150) as fleet:
        state = wait_state(tmp_path, lambda s: len(_ready_workers(s)) == 2, timeout=60)
        workers = {w["name"]: w for w in state["workers"]}
        assert set(workers) == {"worker-ray-0", "worker-ray-1"}
        # Ray gave each actor its own GPU, and the worker under it saw exactly that one.
        masks = {w["cuda_visible_devices"] for w in workers.values()}
        assert masks == {"0", "1"}
        assert {w["device"] for w in workers.values()} == {f"{HEAD_IP}/gpu0", f"{HEAD_IP}/gpu1"}
        assert f"Ray cluster at {HEAD_IP}:" in fleet.log()
        assert "2 GPU(s)" in fleet.log()
        # Placeholders were filled on the node: its address, a port file of the actor's.
        assert "placed by Ray on" in fleet.log()
        assert f"--host {HEAD_IP} --port 0 --port-file /" in fleet.log()

        # Requests through the router reach every worker, each on its own GPU.
        outputs = _served_by(fleet.url, 60)
        by_pid = {w["pid"]: w["cuda_visible_devices"] for w in workers.values()}
        assert {o["pid"] for o in outputs} == set(by_pid)
        assert all(o["cuda_visible_devices"] == by_pid[o["pid"]] for o in outputs)

        # The router's /stats and `gpufleet status` say node and GPU of each worker.
        labelled = _wait(
            lambda: (
                (seen := _router_labels(fleet.url)).keys() == {w["url"] for w in workers.values()}
                and all("node" in v for v in seen.values())
                and seen
            )
        )
        assert labelled, _get(fleet.url + "/stats")
        assert sorted((v["node"], v["gpu"]) for v in labelled.values()) == [
            (HEAD_IP, "0"),
            (HEAD_IP, "1"),
        ]
        status = subprocess.run(
            [sys.executable, "-m", "gpufleet", "status"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert f"{HEAD_IP}/gpu0" in status, status
        assert f"{HEAD_IP}/gpu1" in status, status

        # Kill one actor's process: its worker dies with it, Ray restarts the actor, the
        # fleet starts the worker again through it, and the router learns the new address.
        victim = workers["worker-ray-0"]
        actor_pid = int(victim["labels"]["actor_pid"])
        os.kill(actor_pid, signal.SIGKILL)
        assert _wait(lambda: not is_alive(victim["pid"]), timeout=15), "worker outlived its actor"
        back = wait_state(
            tmp_path,
            lambda s: any(
                w["name"] == "worker-ray-0" and w["state"] == "ready" and w["restarts"] >= 1
                for w in s["workers"]
            ),
            timeout=60,
        )
        reborn = next(w for w in back["workers"] if w["name"] == "worker-ray-0")
        assert reborn["pid"] != victim["pid"]
        assert reborn["url"] != victim["url"]
        assert int(reborn["labels"]["actor_pid"]) != actor_pid
        assert reborn["cuda_visible_devices"] in {"0", "1"}
        new_url = reborn["url"]
        assert _wait(lambda: new_url in _router_labels(fleet.url), timeout=30), _get(
            fleet.url + "/stats"
        )
        # The old address belongs to no member any more: the router forgets it (no row
        # left "draining" in /stats for every actor death), and the new one carries the
        # fleet's restart count (a new id to the router, a pid change nobody saw).
        old_url = victim["url"]
        assert _wait(
            lambda: old_url not in {w["url"] for w in _get(fleet.url + "/stats")["workers"]},
            timeout=30,
        ), _get(fleet.url + "/stats")
        assert _wait(lambda: _router_labels(fleet.url).get(new_url, {}).get("restarts") == "1")
        survivor = next(w for w in back["workers"] if w["name"] == "worker-ray-1")
        outputs = _served_by(fleet.url, 60)
        assert {o["pid"] for o in outputs} == {reborn["pid"], survivor["pid"]}
        masks = {o["cuda_visible_devices"] for o in outputs}
        assert masks == {"0", "1"}

        pids = [reborn["pid"], survivor["pid"], int(reborn["labels"]["actor_pid"])]
        assert fleet.stop(timeout=60) == 0, fleet.log()
    # The fleet's stop ends its actors too (Ray frees their GPUs), and every worker; their
    # work folders (port file, config) go with them.
    assert _wait(lambda: not any(is_alive(pid) for pid in pids), timeout=20), pids
    actor_pid = pids[2]
    assert not list(Path(tempfile.gettempdir()).glob(f"gpufleet-ray-{actor_pid}-*"))


@needs_ray
@pytest.mark.ray
def test_an_actor_out_of_restarts_is_replaced_by_a_new_one(
    ray_cluster: str, tmp_path: Path
) -> None:
    args = ["up", "--ray-address", ray_cluster, *FAST, "--workers", "1"]
    args += ["--ray-max-restarts", "0", "--restart-backoff", "0.2"]
    with run_server(args, cwd=tmp_path, env=RAY_ENV, timeout=150) as fleet:
        state = wait_state(tmp_path, lambda s: len(_ready_workers(s)) == 1, timeout=60)
        (first,) = state["workers"]
        os.kill(int(first["labels"]["actor_pid"]), signal.SIGKILL)
        back = wait_state(
            tmp_path,
            lambda s: s["workers"][0]["state"] == "ready" and s["workers"][0]["restarts"] >= 1,
            timeout=60,
        )
        (again,) = back["workers"]
        assert again["labels"]["actor_pid"] != first["labels"]["actor_pid"]
        assert again["url"] != first["url"]
        assert "gone for good; creating a new one" in fleet.log()
        assert _wait(lambda: again["url"] in _router_labels(fleet.url), timeout=30)
        assert {o["pid"] for o in _served_by(fleet.url, 8)} == {again["pid"]}
        pids = [again["pid"], int(again["labels"]["actor_pid"])]
        assert fleet.stop(timeout=60) == 0, fleet.log()
    assert _wait(lambda: not any(is_alive(pid) for pid in pids), timeout=20), pids


def _kill_node(ip: str) -> None:
    """SIGKILL every Ray process of the node at ``ip``, as if the machine went away."""
    for pid in _processes_mentioning(f"ode-ip-address={ip}") + _processes_mentioning(
        f"ode_ip_address={ip}"
    ):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@needs_ray
@pytest.mark.ray
def test_a_worker_on_a_lost_node_comes_back_on_another(ray_cluster: str, tmp_path: Path) -> None:
    # Runs last: the cluster gets a second node (one GPU), and loses it.
    joined = _ray(
        "start",
        f"--address={ray_cluster}",
        f"--node-ip-address={NODE_IP}",
        "--num-gpus=1",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    )
    assert joined.returncode == 0, joined.stdout + joined.stderr
    args = ["up", "--ray-address", ray_cluster, *FAST, "--workers", "2"]
    args += ["--restart-backoff", "0.2"]
    with run_server(args, cwd=tmp_path, env=RAY_ENV, timeout=150) as fleet:
        state = wait_state(tmp_path, lambda s: len(_ready_workers(s)) == 2, timeout=60)
        assert "2 node(s), 3 GPU(s)" in fleet.log()
        # SPREAD: one worker on each node.
        nodes = {w["labels"]["node"]: w for w in state["workers"]}
        assert set(nodes) == {HEAD_IP, NODE_IP}, state["workers"]
        lost, kept = nodes[NODE_IP], nodes[HEAD_IP]
        _kill_node(NODE_IP)
        assert _wait(lambda: not is_alive(lost["pid"]), timeout=15), "worker outlived its node"
        # Ray notices the node is gone and restarts the actor on the head's free GPU.
        back = wait_state(
            tmp_path,
            lambda s: any(
                w["name"] == lost["name"]
                and w["state"] == "ready"
                and w["labels"]["node"] == HEAD_IP
                for w in s["workers"]
            ),
            timeout=90,
        )
        moved = next(w for w in back["workers"] if w["name"] == lost["name"])
        assert moved["cuda_visible_devices"] != kept["cuda_visible_devices"]
        assert _wait(lambda: moved["url"] in _router_labels(fleet.url), timeout=30)
        outputs = _served_by(fleet.url, 40)
        assert {o["pid"] for o in outputs} == {moved["pid"], kept["pid"]}
        assert fleet.stop(timeout=60) == 0, fleet.log()
