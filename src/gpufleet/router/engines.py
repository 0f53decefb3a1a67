"""What an upstream that is not a gpufleet worker says about itself: its useful concurrency.

An LLM engine batches 32–256 sequences; a fixed cap of a few requests would throttle it,
an unbounded one piles work into one engine's queue. When an upstream turns ready:

- SGLang (``GET /get_server_info`` → ``max_running_requests``) and TGI (``GET /info`` →
  ``max_concurrent_requests``) state their limit: that is the cap.
- vLLM says how busy it is (``GET /metrics``: ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``): the cap starts at ``ENGINE_START`` and is read again
  after every health round; while the engine queues requests the cap comes down to what
  it runs, while it has room and the router holds requests back the cap goes up. A read
  only moves the cap; the router's own in-flight count stays the truth for routing
  (stale polled load is what collapsed other routers onto one engine).
- Anything else: a ``GradientLimit`` from its time to first byte, starting at
  ``upstream.DEFAULT_MAX_OUTSTANDING``.

``--max-outstanding N`` pins the cap and skips all of this.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Final

import aiohttp

from gpufleet.router.limit import GradientLimit
from gpufleet.router.upstream import DEFAULT_MAX_OUTSTANDING, Upstream

log = logging.getLogger("gpufleet.router.health")

#: First cap of an engine that reports its load but not its limit (vLLM).
ENGINE_START: Final = 32
ENGINE_MAX: Final = 1024
#: The most of an answer read (engine info, /metrics).
_MAX_READ: Final = 4 << 20
_RUNNING = re.compile(rb"^vllm:num_requests_running(?:\{[^}]*\})? ([0-9.eE+-]+)", re.M)
_WAITING = re.compile(rb"^vllm:num_requests_waiting(?:\{[^}]*\})? ([0-9.eE+-]+)", re.M)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes] | None:
    try:
        async with session.get(url, allow_redirects=False) as resp:
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > _MAX_READ:
                    return None  # not what an engine answers here
            return resp.status, bytes(body)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


def _json_int(body: bytes, field: str) -> int | None:
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = data.get(field) if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


async def discover(session: aiohttp.ClientSession, upstream: Upstream) -> None:
    """Learn what kind of server ``upstream`` is and set its cap (see the module doc)."""
    base = upstream.base
    for path, field, kind in (
        ("/get_server_info", "max_running_requests", "sglang"),
        ("/info", "max_concurrent_requests", "tgi"),
    ):
        got = await _get(session, base + path)
        if got is not None and got[0] == 200:
            limit = _json_int(got[1], field)
            if limit is not None:
                upstream.engine = kind
                upstream.limiter = None
                upstream.max_outstanding = min(limit, ENGINE_MAX)
                return
    got = await _get(session, base + "/metrics")
    if got is not None and got[0] == 200 and _RUNNING.search(got[1]):
        upstream.engine = "vllm"
        upstream.limiter = None
        upstream.max_outstanding = ENGINE_START
        return
    upstream.engine = "http"
    upstream.limiter = GradientLimit(DEFAULT_MAX_OUTSTANDING, max_limit=ENGINE_MAX)
    upstream.max_outstanding = DEFAULT_MAX_OUTSTANDING


async def poll(session: aiohttp.ClientSession, upstream: Upstream) -> None:
    """Read a vLLM engine's load and move its cap toward what it can run."""
    got = await _get(session, upstream.base + "/metrics")
    if got is None or got[0] != 200:
        return
    running_m = _RUNNING.search(got[1])
    waiting_m = _WAITING.search(got[1])
    if running_m is None or waiting_m is None:
        return
    try:
        running, waiting = int(float(running_m.group(1))), int(float(waiting_m.group(1)))
    except (ValueError, OverflowError):
        return
    upstream.engine_load = (running, waiting, time.monotonic())
    cap = upstream.max_outstanding
    if waiting > 0:
        # It queues: it runs ``running`` at a time. Keep a little queue so that a free
        # slot is filled at its next step, not after a round trip through the router.
        new = max(1, running + max(1, running // 8))
        cap = min(cap, new) if new < cap else cap
    elif upstream.in_flight >= cap:
        cap = min(ENGINE_MAX, cap + max(1, cap // 4))  # room there, requests held here
    if cap != upstream.max_outstanding:
        log.debug("%s: cap %d -> %d", upstream.url, upstream.max_outstanding, cap)
        upstream.max_outstanding = cap
