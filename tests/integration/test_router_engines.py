"""``router.engines`` against a real aiohttp server on 127.0.0.1 port 0: what an engine's
info and ``/metrics`` say, read through the health checker's ``PeerClient`` (its budget and
its size bound), becomes the upstream's kind and cap; anything else leaves it a plain
HTTP upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gpufleet.router import engines
from gpufleet.router.pool import Registry, WorkerSpec
from gpufleet.router.upstream import DEFAULT_MAX_OUTSTANDING
from gpufleet.wire.http import PeerClient

_VLLM = b"vllm:num_requests_running 3.0\nvllm:num_requests_waiting 2.0\n"


def _answer(body: Any) -> Any:
    """A handler answering ``body``: JSON, or bytes as they are."""

    async def handler(request: web.Request) -> web.Response:
        if isinstance(body, bytes):
            return web.Response(body=body)
        return web.json_response(body)

    return handler


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    # sglang: a limit; tgi: a limit that is a bool (not a limit); vllm: /metrics;
    # huge: a /metrics over the bound that would otherwise look like vLLM's.
    app.router.add_get("/sglang/get_server_info", _answer({"max_running_requests": 48}))
    app.router.add_get("/tgi/info", _answer({"max_concurrent_requests": 128}))
    app.router.add_get("/booltgi/info", _answer({"max_concurrent_requests": True}))
    app.router.add_get("/vllm/metrics", _answer(_VLLM))
    huge = _VLLM + b"#" * (5 << 20)
    app.router.add_get("/huge/metrics", _answer(huge))
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "kind", "cap"),
    [
        ("sglang", "sglang", 48),
        ("tgi", "tgi", 128),
        ("vllm", "vllm", engines.ENGINE_START),
        ("booltgi", "http", DEFAULT_MAX_OUTSTANDING),
        ("huge", "http", DEFAULT_MAX_OUTSTANDING),
    ],
)
async def test_discover_sets_kind_and_cap(server: str, path: str, kind: str, cap: int) -> None:
    upstream = Registry().add(WorkerSpec(f"{server}/{path}"))
    async with PeerClient(timeout_s=5.0) as http:
        await engines.discover(http, upstream)
    assert (upstream.engine, upstream.max_outstanding) == (kind, cap)
    assert (upstream.limiter is None) == (kind != "http")


async def test_poll_reads_a_vllm_engines_load(server: str) -> None:
    upstream = Registry().add(WorkerSpec(f"{server}/vllm"))
    async with PeerClient(timeout_s=5.0) as http:
        await engines.discover(http, upstream)
        await engines.poll(http, upstream)
    assert upstream.engine_load is not None
    assert upstream.engine_load[:2] == (3, 2)
    # It queues (2 waiting): the cap comes down to what it runs, plus a little queue.
    assert upstream.max_outstanding == 4
