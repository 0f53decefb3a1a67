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

import logging
import re
import time
from typing import Final

import msgspec

from gpufleet.errors import RequestFailed
from gpufleet.router.limit import GradientLimit
from gpufleet.router.upstream import DEFAULT_MAX_OUTSTANDING, Upstream
from gpufleet.wire.http import PeerAnswer, PeerClient

log = logging.getLogger("gpufleet.router.health")

#: First cap of an engine that reports its load but not its limit (vLLM).
ENGINE_START: Final = 32
ENGINE_MAX: Final = 1024
#: The most of an answer read (engine info, /metrics).
_MAX_READ: Final = 4 << 20
_RUNNING = re.compile(rb"^vllm:num_requests_running(?:\{[^}]*\})? ([0-9.eE+-]+)", re.M)
_WAITING = re.compile(rb"^vllm:num_requests_waiting(?:\{[^}]*\})? ([0-9.eE+-]+)", re.M)


class _SglangInfo(msgspec.Struct):
    """``GET /get_server_info`` of SGLang: only the field read (the rest is ignored)."""

    max_running_requests: int | None = None


class _TgiInfo(msgspec.Struct):
    """``GET /info`` of TGI: only the field read (the rest is ignored)."""

    max_concurrent_requests: int | None = None


async def _get(http: PeerClient, url: str) -> PeerAnswer | None:
    """``GET url`` answered 200 (at most ``_MAX_READ`` bytes), or None."""
    try:
        answer = await http.request("GET", url, max_bytes=_MAX_READ)
    except RequestFailed as exc:
        log.debug("engine discovery: %s", exc.message)
        return None
    return answer if answer.status == 200 else None


def _limit(answer: PeerAnswer, info: type[_SglangInfo] | type[_TgiInfo]) -> int | None:
    """The positive limit an engine's info states, or None (absent, not JSON, not an int)."""
    try:
        decoded = answer.decode(info)
    except RequestFailed:
        return None
    value = (
        decoded.max_running_requests
        if isinstance(decoded, _SglangInfo)
        else decoded.max_concurrent_requests
    )
    return value if value is not None and value > 0 else None


async def discover(http: PeerClient, upstream: Upstream) -> None:
    """Learn what kind of server ``upstream`` is and set its cap (see the module doc)."""
    base = upstream.base
    info: type[_SglangInfo] | type[_TgiInfo]
    for path, info, kind in (
        ("/get_server_info", _SglangInfo, "sglang"),
        ("/info", _TgiInfo, "tgi"),
    ):
        got = await _get(http, base + path)
        if got is not None:
            limit = _limit(got, info)
            if limit is not None:
                upstream.engine = kind
                upstream.limiter = None
                upstream.max_outstanding = min(limit, ENGINE_MAX)
                return
    got = await _get(http, base + "/metrics")
    if got is not None and _RUNNING.search(got.body):
        upstream.engine = "vllm"
        upstream.limiter = None
        upstream.max_outstanding = ENGINE_START
        return
    upstream.engine = "http"
    upstream.limiter = GradientLimit(DEFAULT_MAX_OUTSTANDING, max_limit=ENGINE_MAX)
    upstream.max_outstanding = DEFAULT_MAX_OUTSTANDING


async def poll(http: PeerClient, upstream: Upstream) -> None:
    """Read a vLLM engine's load and move its cap toward what it can run."""
    got = await _get(http, upstream.base + "/metrics")
    if got is None:
        return
    running_m = _RUNNING.search(got.body)
    waiting_m = _WAITING.search(got.body)
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
