"""The batch runner's outcomes, in-process: a router app and a scripted upstream on loopback.

What each answer becomes (output line, error line with its response, retried, waited
for without counting), and a batch whose completion window passed while its router was
down ends ``expired`` with the unsent requests as ``batch_expired``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gpufleet import wire
from gpufleet.batches import extension
from gpufleet.config.router import RouterConfig
from gpufleet.router.app import STATE_KEY, create_app

FINAL = ("completed", "failed", "expired", "cancelled")


def _upstream(calls: Counter[str]) -> web.Application:
    """Answers ``/predict`` by its input: the outcomes a batch request can meet."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def predict(request: web.Request) -> web.Response:
        x = (await request.json())["input"]
        calls[x] += 1
        if x == "bad":
            return web.json_response({"error": "BadRequest", "message": "nope"}, status=400)
        if x == "poison":
            headers = {wire.FAULT_HEADER: wire.FAULT_REQUEST}
            body = {"error": "ModelError", "message": "poisoned"}
            return web.json_response(body, status=500, headers=headers)
        if x == "flaky" and calls[x] <= 2:
            return web.json_response({"error": "ModelError", "message": "once"}, status=500)
        if x == "down":
            return web.json_response({"error": "ModelError", "message": "always"}, status=500)
        if x == "busy" and calls[x] <= 6:
            full = wire.error_payload("WorkerOverloaded", "full", retry_after_s=0.05)
            return web.json_response(
                wire.to_builtins(full), status=503, headers={"Retry-After": "0.05"}
            )
        if x == "slow":
            await asyncio.sleep(60)
        return web.json_response({"output": x})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/predict", predict)
    return app


@asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _router(upstream: str, store: Path, clock: Callable[[], float]) -> AsyncIterator[str]:
    cfg = RouterConfig(workers=(upstream,), port=0, batch_store=str(store), health_interval_s=0.2)
    app = create_app(cfg, extensions=[extension(cfg, clock=clock)])
    async with _serve(app) as url:
        for hook in app[STATE_KEY].on_listen:
            await hook(url)
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                async with s.get(url + "/health") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.05)
        yield url


async def _call(method: str, url: str, **kw: Any) -> Any:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json() if "json" in resp.content_type else await resp.text()


async def _submit(router: str, inputs: list[str], window: str = "24h") -> str:
    lines = "".join(
        json.dumps(
            {"custom_id": f"c{i}", "method": "POST", "url": "/predict", "body": {"input": x}}
        )
        + "\n"
        for i, x in enumerate(inputs)
    )
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", lines.encode(), filename="in.jsonl")
    file = await _call("POST", router + "/v1/files", data=form)
    body = {"input_file_id": file["id"], "endpoint": "/predict", "completion_window": window}
    batch = await _call("POST", router + "/v1/batches", json=body)
    return str(batch["id"])


async def _wait(router: str, batch_id: str, done: Callable[[Any], bool]) -> Any:
    async with asyncio.timeout(60):
        while True:
            batch = await _call("GET", f"{router}/v1/batches/{batch_id}")
            if done(batch):
                return batch
            await asyncio.sleep(0.05)


async def _lines(router: str, file_id: str | None) -> dict[str, Any]:
    if file_id is None:
        return {}
    text = await _call("GET", f"{router}/v1/files/{file_id}/content")
    return {line["custom_id"]: line for line in map(json.loads, text.splitlines())}


async def test_each_outcome_lands_where_openai_puts_it(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    inputs = ["ok-1", "bad", "poison", "flaky", "down", "busy", "ok-2"]
    async with _serve(_upstream(calls)) as up, _router(up, tmp_path, time.time) as router:
        batch_id = await _submit(router, inputs)
        batch = await _wait(router, batch_id, lambda b: b["status"] in FINAL)
        assert batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 7, "completed": 4, "failed": 3}
        out = await _lines(router, batch["output_file_id"])
        err = await _lines(router, batch["error_file_id"])
    assert sorted(out) == ["c0", "c3", "c5", "c6"]
    assert out["c3"]["response"]["body"] == {"output": "flaky"}
    assert sorted(err) == ["c1", "c2", "c4"]
    assert err["c1"]["response"]["status_code"] == 400  # the caller's fault: final at once
    assert err["c2"]["response"]["status_code"] == 500  # blamed on the request: final
    assert err["c4"]["response"]["status_code"] == 500  # the worker's: retried, then kept
    assert err["c4"]["response"]["body"]["message"] == "always"
    # 4xx and request faults ran once; the flaky one until it passed; "down" five times;
    # "busy" more times than attempts are allowed, since "not now" is not an attempt.
    assert calls["bad"] == calls["poison"] == 1
    assert calls["flaky"] == 3
    assert calls["down"] == 5
    assert calls["busy"] == 7


async def test_a_window_that_passed_while_down_expires_what_is_left(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    offset = 0.0

    def clock() -> float:
        return time.time() + offset

    async with _serve(_upstream(calls)) as up:
        async with _router(up, tmp_path, clock) as router:
            batch_id = await _submit(router, ["ok-1", "slow", "ok-2", "slow"], window="1h")
            await _wait(router, batch_id, lambda b: b["request_counts"]["completed"] == 2)
        offset = 3601.0  # the router was down past the completion window
        async with _router(up, tmp_path, clock) as router:
            batch = await _wait(router, batch_id, lambda b: b["status"] in FINAL)
            assert batch["status"] == "expired"
            assert batch["expired_at"] is not None
            assert batch["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
            out = await _lines(router, batch["output_file_id"])
            err = await _lines(router, batch["error_file_id"])
    assert sorted(out) == ["c0", "c2"]
    assert sorted(err) == ["c1", "c3"]
    assert {e["error"]["code"] for e in err.values()} == {"batch_expired"}
    assert all(e["response"] is None for e in err.values())
