"""The headers the router hands back to the client: hop-by-hop out, its own in."""

from __future__ import annotations

from gpufleet.router.headers import response_headers

from ._http1 import answer


async def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    resp, _ = await answer(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Trailer: X-T\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"X-Request-Id: from-upstream\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\n"
        b"\r\n"
        b"0\r\n\r\n"
    )
    await resp.wait_head()
    out = response_headers(resp, "rid-1", "w3")
    assert sorted(k for k, _ in out.items()) == sorted(
        ["Content-Type", "Set-Cookie", "Set-Cookie", "X-Request-Id", "X-Gpufleet-Upstream"]
    )
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert out["X-Request-Id"] == "rid-1"
    assert out["X-Gpufleet-Upstream"] == "w3"
