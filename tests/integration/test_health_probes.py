"""The router's health probes against a real aiohttp server on 127.0.0.1 port 0.

Probes reuse their keep-alive connections (no new session or socket per probe), a probe
that gets no answer within its budget counts as failed, and a stalled worker's reason is
read from its ``/health`` body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gpufleet.router.health import HealthChecker, HealthSettings
from gpufleet.router.pool import Registry, WorkerSpec
from gpufleet.router.upstream import EJECTED, READY

_GUARD_S = 10.0


@dataclass
class _Server:
    url: str
    peers: set[object] = field(default_factory=set)
    answer: str = "ready"  # "ready", "stalled" or "hang"
    probes: int = 0


async def _started(checker: HealthChecker, registry: Registry) -> None:
    """Start ``checker`` and wait out its first round (its loop then sleeps a minute)."""
    round_done = asyncio.Event()
    checker.on_round = round_done.set
    await checker.start()
    await round_done.wait()
    assert all(u.state == READY for u in registry.all())


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    srv = _Server("")

    async def health(request: web.Request) -> web.Response:
        srv.probes += 1
        srv.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        if srv.answer == "hang":
            await asyncio.Event().wait()
        if srv.answer == "stalled":
            body = {"status": "stalled", "reason": "device thread stuck for 63s"}
            return web.json_response(body, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield srv
    finally:
        await runner.cleanup()


async def test_probes_reuse_their_connections(server: _Server) -> None:
    registry = Registry()
    upstream = registry.add(WorkerSpec(server.url))
    checker = HealthChecker(registry, HealthSettings(interval_s=60.0, timeout_s=2.0))
    try:
        async with asyncio.timeout(_GUARD_S):
            await _started(checker, registry)
            for _ in range(20):
                await checker.probe(upstream)
    finally:
        await checker.aclose()
    assert server.probes == 21  # the first round's and these
    assert upstream.state == READY
    # Kept-alive connections served every probe: at most the two per upstream, not one
    # socket (or session) per probe.
    assert 1 <= len(server.peers) <= 2


async def test_a_probe_without_answer_fails_within_its_budget(
    server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    upstream = registry.add(WorkerSpec(server.url))
    settings = HealthSettings(interval_s=60.0, timeout_s=0.2, eject_after=2)
    checker = HealthChecker(registry, settings)
    try:
        async with asyncio.timeout(_GUARD_S):
            await _started(checker, registry)
            server.answer = "stalled"
            await checker.probe(upstream)
            await checker.probe(upstream)
            assert upstream.state == EJECTED
            assert "stalled device thread stuck for 63s" in caplog.text
            server.answer = "hang"
            before = upstream.consecutive_fails
            await checker.probe(upstream)  # returns: the budget ends the wait
            assert upstream.consecutive_fails == before + 1
    finally:
        await checker.aclose()
