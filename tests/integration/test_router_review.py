"""Fixes from the router review: deadlines on uploads and streams, odd headers, HEAD."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from gpufleet.testing import run_router
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import get_json, wait_state


async def _raw(url: str, data: bytes, *, within: float) -> bytes:
    """Send ``data`` on a fresh socket and read until the router closes it (or ``within``)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        async with asyncio.timeout(within):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
        return got
    finally:
        writer.close()


async def test_a_stalled_upload_gets_408_within_the_deadline() -> None:
    with run_upstream() as upstream, run_router([upstream.url], "--timeout", "1") as router:
        await wait_state(router.url, upstream.url, "ready", within=10)
        head = (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        started = time.monotonic()
        answer = await _raw(router.url, head + b"0123456789", within=5)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"RequestTimeout" in answer
        assert took < 3.0, took
        totals = (await get_json(router.url + "/stats"))["totals"]
        assert totals["in_flight"] == 0
        assert totals["active"] == 0
        seen = await get_json(upstream.url + "/stats")
        assert seen["requests"] == 0  # nothing reached the upstream
