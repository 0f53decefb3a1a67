"""The admin plane stays apart (issue 13): every ``/admin`` path is the router's own, the
admin token never reaches an upstream, and a hostile ``Authorization`` is a plain 401."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gpufleet.testing import run_router
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import TOKEN, get_json, wait_state

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Calls the admin API does not define: 405 where the path is one of its own, else 404.
_UNDEFINED = [
    ("PUT", "/admin/workers", 405),
    ("PATCH", "/admin/workers", 405),
    ("DELETE", "/admin/workers", 405),
    ("GET", "/admin/workers/w0/drain", 405),
    ("PUT", "/admin/workers/w0", 405),
    ("GET", "/admin/workers/w0", 405),
    ("GET", "/admin", 404),
    ("POST", "/admin/nothing/here", 404),
    ("OPTIONS", "/admin/workers", 405),
]


async def _call(
    method: str, url: str, *, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, url, headers=headers, json=body) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def _raw(url: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh socket; what came back before the server closed (or 5 s)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                got += chunk
                if b"\r\n\r\n" in got and got.endswith(b"}"):
                    break
        return got
    finally:
        writer.close()


async def test_every_admin_path_is_answered_by_the_router_never_proxied() -> None:
    with (
        run_upstream() as upstream,
        run_router([upstream.url], env={"GPUFLEET_ADMIN_TOKEN": TOKEN}) as router,
    ):
        await wait_state(router.url, upstream.url, "ready", within=10)
        for method, path, expected in _UNDEFINED:
            status, headers, body = await _call(method, router.url + path, headers=AUTH)
            assert status == expected, (method, path, body)
            assert body["error"] == ("MethodNotAllowed" if expected == 405 else "NotFound")
            if expected == 405:
                assert headers["Allow"]
            status, _, body = await _call(method, router.url + path)
            assert status == 401, (method, path, body)
        # A body to an undefined admin call is refused, not read; the API's own limit is 64 KiB.
        for head in (b"PUT /admin/workers", b"POST /admin/workers"):
            answer = await _raw(
                router.url,
                head
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                + TOKEN.encode()
                + b"\r\nContent-Length: 20000000000\r\n\r\n"
                + b"x" * 100_000,
            )
            assert answer.startswith((b"HTTP/1.1 405", b"HTTP/1.1 413")), answer[:300]
            assert b"Connection: close" in answer
        assert (await get_json(upstream.url + "/stats"))["requests"] == 0
    with run_upstream() as upstream, run_router([upstream.url]) as router:
        await wait_state(router.url, upstream.url, "ready", within=10)
        for method, path, _ in _UNDEFINED:  # admin off: still never proxied
            status, _, body = await _call(method, router.url + path, headers=AUTH)
            assert status == 404, (method, path, body)
        assert (await get_json(upstream.url + "/stats"))["requests"] == 0


async def test_the_admin_token_is_not_forwarded_on_proxied_paths() -> None:
    with (
        run_upstream() as upstream,
        run_router([upstream.url], env={"GPUFLEET_ADMIN_TOKEN": TOKEN}) as router,
    ):
        await wait_state(router.url, upstream.url, "ready", within=10)
        for auth in (f"Bearer {TOKEN}", f"bearer  {TOKEN} "):
            status, _, seen = await _call(
                "POST", router.url + "/echo", headers={"Authorization": auth}
            )
            assert status == 200
            assert "Authorization" not in seen["headers"], seen["headers"]
        # Other credentials stay at the router too unless it is told to pass them on.
        status, _, seen = await _call(
            "POST",
            router.url + "/echo",
            headers={"Authorization": "Bearer sk-engine-key", "Cookie": "s=1"},
        )
        assert status == 200
        assert "Authorization" not in seen["headers"]
        assert "Cookie" not in seen["headers"]
    with (
        run_upstream() as upstream,
        run_router([upstream.url], "--forward-auth", env={"GPUFLEET_ADMIN_TOKEN": TOKEN}) as router,
    ):
        await wait_state(router.url, upstream.url, "ready", within=10)
        # --forward-auth: an engine's own API key goes through; the admin token never.
        status, _, seen = await _call(
            "POST", router.url + "/echo", headers={"Authorization": "Bearer sk-engine-key"}
        )
        assert seen["headers"]["Authorization"] == "Bearer sk-engine-key"
        status, _, seen = await _call(
            "POST", router.url + "/echo", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert "Authorization" not in seen["headers"]


async def test_a_non_utf8_bearer_token_is_a_401_not_a_500() -> None:
    with (
        run_upstream() as upstream,
        run_router([upstream.url], env={"GPUFLEET_ADMIN_TOKEN": TOKEN}) as router,
    ):
        for path in (b"/admin/workers", b"/admin/workers/w0/drain", b"/admin/x"):
            answer = await _raw(
                router.url,
                b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
            assert b'"Unauthorized"' in answer
        assert "Traceback" not in router.log()
        assert "Error handling request" not in router.log()


async def test_the_admin_api_can_listen_on_its_own_port() -> None:
    from gpufleet.testing._process import free_port

    admin_port = free_port()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        run_upstream() as upstream,
        run_upstream() as second,
        run_router(
            [upstream.url], "--admin-port", str(admin_port), env={"GPUFLEET_ADMIN_TOKEN": TOKEN}
        ) as router,
    ):
        admin = f"http://127.0.0.1:{admin_port}"
        # The endpoint knows no admin API now: every /admin path is its own 404.
        status, _, body = await _call("GET", router.url + "/admin/workers", headers=auth)
        assert status == 404, body
        assert "own port" in body["message"]
        assert (await get_json(upstream.url + "/stats"))["requests"] == 0  # never proxied
        # The admin listener has it, with the token.
        status, _, body = await _call("GET", admin + "/admin/workers")
        assert status == 401
        status, _, body = await _call("GET", admin + "/admin/workers", headers=auth)
        assert status == 200, body
        status, _, body = await _call(
            "POST", admin + "/admin/workers", headers=auth, body={"url": second.url}
        )
        assert status == 201, body
        await wait_state(router.url, second.url, "ready", within=10)
        # And only it: the admin listener proxies nothing.
        status, _, _ = await _call("GET", admin + "/echo")
        assert status == 404
