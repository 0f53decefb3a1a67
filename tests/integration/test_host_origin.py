"""Host and Origin (issue 13): a loopback router or worker serves only loopback host names,
so a DNS-rebinding page gets 421, and a page of another origin cannot POST to it (403).
Clients that are not browsers (no ``Origin``) are not affected."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gpufleet.testing import ServerProcess, run_router, run_worker
from tests.integration._router import wait_state


async def _call(
    method: str, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, url, headers=headers, json=body) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


@contextlib.contextmanager
def _served(kind: str, *args: str) -> Iterator[ServerProcess]:
    with run_worker(
        "synthetic", "--model-arg", "base_ms=1", *(args if kind == "worker" else ())
    ) as w:
        if kind == "worker":
            yield w
            return
        with run_router([w.url], *args) as router:
            yield router


@pytest.mark.parametrize("kind", ["router", "worker"])
async def test_a_rebinding_page_and_a_cross_site_post_are_refused(kind: str) -> None:
    with _served(kind) as server:
        if kind == "router":
            stats = await _call("GET", server.url + "/stats", {})
            await wait_state(server.url, stats[1]["workers"][0]["url"], "ready", within=10)
        port = server.port
        predict = server.url + "/predict"
        body = {"input": "hi"}
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "0.0.0.0"):
            for method, path, payload in (("GET", "/stats", None), ("POST", "/predict", body)):
                status, answer = await _call(method, server.url + path, {"Host": host}, payload)
                assert status == 421, (host, path, answer)
                assert answer["error"] == "MisdirectedRequest"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
            status, answer = await _call("POST", predict, {"Host": host}, body)
            assert status == 200, (host, answer)
        refused = (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": f"http://evil.example:{port}"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "https://evil.example", "Content-Type": "text/plain"},
        )
        for headers in refused:
            status, answer = await _call("POST", predict, headers, body)
            assert status == 403, (headers, answer)
            assert answer["error"] == "CrossOriginRefused"
        served: tuple[dict[str, str], ...] = (
            {},  # curl, the Python client: no Origin
            {"Origin": f"http://127.0.0.1:{port}"},  # the page of this server itself
            {"Origin": "http://localhost:3000"},  # a page on this machine
            {"Sec-Fetch-Site": "same-origin"},
        )
        for headers in served:
            status, answer = await _call("POST", predict, headers, body)
            assert status == 200, (headers, answer)
        # Reading with a foreign Origin is answered (no CORS headers: a page cannot read it).
        status, _ = await _call("GET", server.url + "/health", {"Origin": "http://evil.example"})
        assert status == 200


async def test_allowed_hosts_are_served() -> None:
    with _served(
        "router", "--allowed-host", "api.example.com", "--allowed-host", "*.corp.net"
    ) as r:
        for host in ("api.example.com", "api.example.com:443", "gpu.corp.net"):
            status, answer = await _call("GET", r.url + "/stats", {"Host": host})
            assert status == 200, (host, answer)
        assert (await _call("GET", r.url + "/stats", {"Host": "corp.net"}))[0] == 421
        headers = {"Host": "api.example.com", "Origin": "https://api.example.com"}
        status, answer = await _call("POST", r.url + "/admin/workers", headers, {})
        assert status == 404, answer  # past the guard (the admin API is off)
