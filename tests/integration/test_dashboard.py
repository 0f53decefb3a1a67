"""The router's /dashboard, loaded in headless Chromium against a real router and workers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gpufleet.router.dashboard import WorkerStatsReader
from gpufleet.router.pool import Registry, WorkerSpec
from gpufleet.testing import run_router, run_server, run_worker

TOKEN = "token-for-tests"
PLACED = {"placement": "10.0.0.7/gpu3", "hostname": "gpu-node-7", "node": "10.0.0.7"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/system-deps installs it)"
)


class Browser:
    """Headless Chromium driven over the DevTools protocol, in real time.

    ``--dump-dom`` with ``--virtual-time-budget`` runs the page's timers in virtual time,
    so its one-second polls come milliseconds apart and no live rate can be seen; here the
    page polls in real seconds, as in a person's browser.
    """

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self.profile = profile
        args = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        # A file, not a pipe: chromium is chatty on stderr and a full pipe would stall it.
        self.log_path = profile.with_name(profile.name + ".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True
        )
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def __aenter__(self) -> Browser:
        try:
            await self._connect()
        except BaseException:
            await self.__aexit__(None, None, None)  # never leave a browser behind
            raise
        return self

    async def _connect(self) -> None:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.proc.poll() is None, f"chromium exited at start: {self.log_tail()}"
            assert time.monotonic() < deadline, f"no DevToolsActivePort: {self.log_tail()}"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Runtime.enable")

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 30)
        self._log.close()

    def log_tail(self) -> str:
        """The end of chromium's own output (for a failure message)."""
        return self.log_path.read_bytes()[-2000:].decode("utf-8", "replace")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command; note page exceptions that arrive meanwhile."""
        assert self._ws is not None
        msg_id = next(self._ids)
        await self._ws.send_json({"id": msg_id, "method": method, "params": params})
        async with asyncio.timeout(30):
            while True:
                msg = await self._ws.receive_json()
                if msg.get("method") == "Runtime.exceptionThrown":
                    self.errors.append(json.dumps(msg["params"]["exceptionDetails"])[:500])
                if msg.get("id") == msg_id:
                    assert "error" not in msg, msg
                    result: dict[str, Any] = msg["result"]
                    return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def open(self, url: str, *, polls: int) -> str:
        """Load ``url``, wait until it has polled ``polls`` times, return its DOM."""
        await self.call("Page.navigate", url=url)
        return await self.after_polls(polls)

    async def polls(self) -> int:
        """How many times the dashboard has read its stats so far."""
        return int(await self.evaluate("document.getElementById('updated')?.dataset.polls ?? 0"))

    async def after_polls(self, polls: int, timeout_s: float = 60) -> str:
        """The DOM once the page has polled ``polls`` times in all."""
        deadline = time.monotonic() + timeout_s
        while await self.polls() < polls:
            assert time.monotonic() < deadline, f"the page polled fewer than {polls} times"
            await asyncio.sleep(0.2)
        html: str = await self.evaluate("document.documentElement.outerHTML")
        return html


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def post(url: str, body: object, token: str | None = None) -> None:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def cells(row: str) -> dict[str, str]:
    """``{column: text}`` of a row's cells."""
    return dict(re.findall(r'<td [^>]*data-col="([a-z0-9-]+)"[^>]*>([^<]*)</td>', row))


def rows_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-worker-id="([^"]+)" class="worker-row">(.*?)</tr>', html))


def chart(html: str, name: str) -> tuple[int, int, str]:
    """(series drawn, points drawn, inner SVG) of one chart."""
    found = re.search(
        rf'<svg class="plot" id="{name}" data-series="(\d+)" data-points="(\d+)"[^>]*>(.*?)</svg>',
        html,
        re.S,
    )
    assert found is not None, f"no {name} chart in the page"
    return int(found.group(1)), int(found.group(2)), found.group(3)


def test_dashboard_page_and_its_stats_are_served() -> None:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=1") as a,
        run_router([a.url]) as router,
    ):
        with urllib.request.urlopen(router.url + "/dashboard", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/html")
            page = resp.read().decode()
        post(router.url + "/predict", {"input": "x"})
        data = get_json(router.url + "/dashboard/stats")
        deadline = time.monotonic() + 30
        while len(samples := get_json(router.url + "/dashboard/stats?history=1")["history"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    # Self-contained: nothing fetched from anywhere but the router itself.
    assert "<script src" not in page
    assert "<link" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    (entry,) = data["workers"]
    assert entry["url"] == a.url
    assert entry["served"] == 1
    assert entry["worker"]["server"] == "gpufleet-worker"
    assert entry["worker"]["served"] == 1
    assert entry["worker"]["device"] == "cpu"
    assert "gpu" not in entry["worker"]  # no GPU here: no made-up numbers
    assert data["totals"]["requests"] == 1
    assert "history" not in data  # only asked for on a page's first poll
    assert abs(data["now"] - time.time()) < 60
    # Sampled by the router every 2 s: [served, p50 ms, p99 ms] per upstream.
    assert samples[-1]["workers"][entry["id"]][0] == 1
    assert samples[-1]["workers"][entry["id"]][1] > 0
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)


def test_dashboard_stats_says_why_a_worker_is_unreadable() -> None:
    with run_worker("synthetic") as a, run_router([a.url], "--health-interval", "0.2") as router:
        pid = a.pid
        a.kill()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            (entry,) = get_json(router.url + "/dashboard/stats")["workers"]
            if "worker_error" in entry:
                break
            time.sleep(0.2)
    assert "worker" not in entry, f"pid {pid} was killed but its stats were read"
    assert "/stats" in entry["worker_error"]


@needs_chromium
async def test_dashboard_draws_every_worker_and_live_numbers(tmp_path: Path) -> None:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=5", "--model-arg", "fail_on=bad") as a,
        run_worker("synthetic", "--model-arg", "base_ms=5") as b,
        run_router([a.url], "--admin-token", TOKEN) as router,
    ):
        # b joins as a fleet adds a placed worker: labels say where it runs.
        post(router.url + "/admin/workers", {"url": b.url, "labels": PLACED}, token=TOKEN)
        deadline = time.monotonic() + 30
        while [w["state"] for w in get_json(router.url + "/stats")["workers"]] != ["ready"] * 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        for i in range(12):
            post(router.url + "/predict", {"input": i})
        with pytest.raises(urllib.error.HTTPError, match="500"):
            post(a.url + "/predict", {"input": "bad"})  # one error of worker a's own
        before = {w["id"]: w["served"] for w in get_json(router.url + "/stats")["workers"]}
        stop = threading.Event()

        def load() -> None:  # live traffic while the page is open: its rates must move
            while not stop.is_set():
                post(router.url + "/predict", {"input": "live"})
                time.sleep(0.01)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            async with Browser(tmp_path / "profile") as browser:
                html = await browser.open(router.url + "/dashboard", polls=4)
                errors = browser.errors
        finally:
            stop.set()
            await asyncio.to_thread(loader.join, 15)
        stats = get_json(router.url + "/dashboard/stats")

    assert errors == []  # no JavaScript exception in the page
    rows = rows_of(html)
    assert set(rows) == {w["id"] for w in stats["workers"]}
    assert len(rows) == 2
    drawn: dict[str, int] = {}
    for w in stats["workers"]:
        row = rows[w["id"]]
        assert w["url"] in row
        assert "state-ready" in row
        numbers = cells(row)
        # Drawn while the load ran: between what was served before and what it ended at.
        drawn[w["id"]] = int(numbers["served"].replace(",", ""))
        assert before[w["id"]] <= drawn[w["id"]] <= w["served"]
        if drawn[w["id"]]:  # the policy may leave a worker idle: it then has no latency
            assert float(numbers["p50"]) > 0
            assert float(numbers["p99"]) >= float(numbers["p50"])
            assert float(numbers["avg-batch"]) >= 1.0  # from the worker's own /stats
        assert numbers["queue"] != "–"
        if w["url"] == b.url:
            assert numbers["node"] == "gpu-node-7"
            assert numbers["device"] == "10.0.0.7/gpu3 · cpu"  # placement, then its own
        else:
            assert numbers["node"] == "127.0.0.1"
            assert numbers["device"] == "cpu"
        assert numbers["restarts"] == "0"
        assert numbers["gpu-util"] == "–"  # CPU workers report no GPU
    assert sum(drawn.values()) > sum(before.values()) >= 12  # numbers from while it ran
    assert sum(float(cells(r)["rps"]) for r in rows.values()) > 0  # live rates drawn
    polls = re.search(r'id="updated" data-polls="(\d+)"', html)
    assert polls is not None
    assert int(polls.group(1)) >= 4  # it kept polling, not a one-off render
    series, points, svg = chart(html, "chart-rps")
    assert series == 2
    assert points > 0
    assert {f'data-worker-id="{w["id"]}"' for w in stats["workers"]} <= set(
        re.findall(r'data-worker-id="[^"]+"', svg)
    )
    series, points, _ = chart(html, "chart-latency")
    assert series >= 2
    assert points > 0
    assert re.search(r'<div class="chart" id="chart-gpu-box" hidden', html)
    assert re.search(r'id="error" hidden', html)  # /dashboard/stats was read without error
    a_id = next(w["id"] for w in stats["workers"] if w["url"] == a.url)
    listed = re.findall(r'<li class="recent-error" data-worker-id="([^"]+)">(.*?)</li>', html)
    assert [w for w, _ in listed] == [a_id]
    assert "ModelError" in listed[0][1]
    assert "synthetic failure: input 'bad'" in listed[0][1]


@needs_chromium
async def test_dashboard_counts_a_worker_restart_in_a_fleet(tmp_path: Path) -> None:
    args = ["up", "--model", "synthetic", "--cpu-workers", "2", "--restart-backoff", "0.2"]
    with run_server(args, cwd=tmp_path) as fleet:
        deadline = time.monotonic() + 60
        while True:  # both workers ready behind the router, their own stats read
            workers = get_json(fleet.url + "/dashboard/stats")["workers"]
            if len(workers) == 2 and all(w["state"] == "ready" and "worker" in w for w in workers):
                break
            assert time.monotonic() < deadline, workers
            await asyncio.sleep(0.2)
        victim = workers[0]
        async with Browser(tmp_path / "profile") as browser:
            html = await browser.open(fleet.url + "/dashboard", polls=2)
            assert cells(rows_of(html)[victim["id"]])["restarts"] == "0"
            os.kill(victim["worker"]["pid"], signal.SIGKILL)
            while True:  # the supervisor starts it again on the same port
                entry = next(
                    w for w in get_json(fleet.url + "/dashboard/stats")["workers"]
                    if w["id"] == victim["id"]
                )  # fmt: skip
                pid = entry.get("worker", {}).get("pid")
                if pid not in (None, victim["worker"]["pid"]) and entry["state"] == "ready":
                    break
                assert time.monotonic() < deadline + 60, entry
                await asyncio.sleep(0.2)
            html = await browser.after_polls(await browser.polls() + 2)
            errors = browser.errors

    assert errors == []
    rows = rows_of(html)
    assert cells(rows[victim["id"]])["restarts"] == "1"
    other = next(i for i in rows if i != victim["id"])
    assert cells(rows[other])["restarts"] == "0"
    assert cells(rows[victim["id"]])["state"] == "ready"


@needs_chromium
async def test_dashboard_opens_with_the_minutes_before(tmp_path: Path) -> None:
    with (
        run_worker("synthetic", "--model-arg", "base_ms=5") as a,
        run_router([a.url]) as router,
    ):
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                post(router.url + "/predict", {"input": "earlier"})
                time.sleep(0.01)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            deadline = time.monotonic() + 60
            while len(get_json(router.url + "/dashboard/stats?history=1")["history"]) < 5:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.to_thread(loader.join, 15)
        async with Browser(tmp_path / "profile") as browser:
            html = await browser.open(router.url + "/dashboard", polls=1)
            errors = browser.errors

    assert errors == []
    # One poll: without the router's history there would be no rate at all yet.
    series, points, _ = chart(html, "chart-rps")
    assert series == 1
    assert points >= 4
    series, points, _ = chart(html, "chart-latency")
    assert points >= 2  # p50 and p99 of the minutes with traffic


async def test_worker_stats_are_read_once_per_interval_and_never_wait_long() -> None:
    hits = {"fast": 0, "slow": 0}

    async def fast(request: web.Request) -> web.Response:
        hits["fast"] += 1
        return web.json_response({"server": "gpufleet-worker", "queue_depth": 3})

    async def slow(request: web.Request) -> web.Response:
        hits["slow"] += 1
        await asyncio.sleep(30)  # a wedged worker
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/fast/stats", fast)
    app.router.add_get("/slow/stats", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    registry = Registry()
    for name in ("fast", "slow"):
        registry.add(WorkerSpec(f"http://127.0.0.1:{port}/{name}")).is_gpufleet = True
    try:
        async with WorkerStatsReader(registry, timeout_s=0.5, max_age_s=0.3) as reader:
            started = time.monotonic()
            answers = await asyncio.gather(*(reader.read() for _ in range(20)))
            took = time.monotonic() - started
            assert hits == {"fast": 1, "slow": 1}  # 20 pages polling: one read each
            assert took < 5  # bounded by the timeout, not by the wedged worker
            first = answers[0]
            assert all(a == first for a in answers)
            assert first["w0"] == {"worker": {"server": "gpufleet-worker", "queue_depth": 3}}
            assert first["w1"]["worker_error"] == (
                f"GET http://127.0.0.1:{port}/slow/stats: no answer within 0.5s"
            )
            await asyncio.sleep(0.35)
            await reader.read()
            assert hits["fast"] == 2  # stale after max_age_s: read again
    finally:
        await runner.cleanup()


async def test_an_llm_upstream_shows_tokens_per_second_and_ttft(tmp_path: Path) -> None:
    from gpufleet.testing.llm_engine import run_engine

    with run_engine() as engine, run_router([engine.url]) as router:
        stop = threading.Event()
        body = {
            "model": "sim-llm",
            "messages": [{"role": "user", "content": "tell me " * 50}],
            "max_tokens": 16,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

        def load() -> None:
            while not stop.is_set():
                post(router.url + "/v1/chat/completions", body)

        loader = threading.Thread(target=load)
        loader.start()
        try:
            async with Browser(tmp_path / "profile") as browser:
                html = await browser.open(router.url + "/dashboard", polls=4)
                errors = browser.errors
        finally:
            stop.set()
            await asyncio.to_thread(loader.join, 15)
    assert errors == []
    (row,) = rows_of(html).values()
    numbers = cells(row)
    assert float(numbers["tok-rate"].replace(",", "")) > 0, numbers
    assert float(numbers["ttft"]) > 0, numbers
