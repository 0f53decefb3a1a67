"""Upstream URLs are checked and never followed elsewhere (issue 13: SSRF)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from gpufleet import wire
from gpufleet.testing import run_router
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import TOKEN, get_json, wait_for, wait_state

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Never a model server, whatever the settings.
_REFUSED = [
    "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]:80",
    "http://[fd00:ec2::254]",
    "http://0.0.0.0:8000",
    "http://224.0.0.1:80",
    "http://2130706433:22",
    "http://0x7f.1:8000",
    "http://127.1:8000",
    "http://[::ffff:127.0.0.1]:8000",
    "http://a b:80",
    "http://host:0",
    "http://metadata.invalid:80",  # does not resolve
    "file:///etc/passwd",
    "gopher://127.0.0.1:25",
]


async def _add(router_url: str, url: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(router_url + "/admin/workers", headers=AUTH, json={"url": url}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_the_admin_api_refuses_what_is_never_a_model_server() -> None:
    with (
        run_upstream() as upstream,
        run_router([], env={"GPUFLEET_ADMIN_TOKEN": TOKEN}, ready=False) as router,
    ):
        await wait_for(lambda: _ok(router.url), within=20, what="router up")
        for url in _REFUSED:
            status, body = await _add(router.url, url)
            assert status == 400, (url, body)
        port = upstream.url.rsplit(":", 1)[1]
        for url in (upstream.url, f"http://localhost:{port}"):
            status, body = await _add(router.url, url)
            assert status == 201, (url, body)
        # Beyond loopback only where --allow-upstream says (a private network is not a
        # model server's by default: an admin add cannot reach into it).
        status, body = await _add(router.url, "http://10.0.0.1:8000")
        assert status == 400, body
        assert "outside --allow-upstream" in body["message"]
        urls = [w["url"] for w in (await get_json(router.url + "/stats"))["workers"]]
        assert urls == [upstream.url, f"http://localhost:{port}"]
    with run_router(
        [],
        "--allow-upstream",
        "10.0.0.0/8",
        env={"GPUFLEET_ADMIN_TOKEN": TOKEN},
        ready=False,
    ) as router:
        await wait_for(lambda: _ok(router.url), within=20, what="router up")
        assert (await _add(router.url, "http://192.168.1.5:8000"))[0] == 400
        assert (await _add(router.url, "http://10.1.2.3:8000"))[0] == 201
        assert (await _add(router.url, "http://127.0.0.1:8000"))[0] == 201  # loopback may


async def _ok(url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        await get_json(url + "/stats")
        return True
    return False


@contextlib.asynccontextmanager
async def _redirecting_worker(target: str) -> AsyncIterator[str]:
    """Looks like a gpufleet worker, but its ``/stats`` redirects to ``target``."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"}, headers={wire.SERVER_HEADER: "1"})

    async def stats(request: web.Request) -> web.Response:
        raise web.HTTPFound(target)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_stats_reads_follow_no_redirect() -> None:
    with run_upstream() as internal:
        async with _redirecting_worker(internal.url + "/echo?secret") as hostile:
            # ready=False: the hostile worker runs on this test's loop, which must not block.
            with run_router([hostile], ready=False) as router:
                await wait_state(router.url, hostile, "ready", within=10)
                data = await get_json(router.url + "/dashboard/stats")
                entry = data["workers"][0]
                assert "worker" not in entry, entry
                assert "302" in entry["worker_error"], entry
                assert (await get_json(internal.url + "/stats"))["requests"] == 0
                assert "could not read /stats" in router.log()
