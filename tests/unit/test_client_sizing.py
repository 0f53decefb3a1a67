"""The client sizes an endpoint's slots from its /stats, decoded once into the wire types."""

from __future__ import annotations

from typing import Any

import msgspec

from gpufleet import Client, wire
from gpufleet.client._transport import MemoryTransport, Reply, json_reply

URL = "http://e"


def _zeros(struct: type[msgspec.Struct], **fields: Any) -> dict[str, Any]:
    """A JSON body of ``struct`` with every required field zero-like, then ``fields``."""
    plain: dict[str, Any] = {}
    for name, kind in zip(struct.__struct_fields__, msgspec.structs.fields(struct), strict=True):
        text = str(kind.type)
        if "dict" in text:
            plain[name] = {}
        elif "list" in text:
            plain[name] = []
        elif "str" in text:
            plain[name] = ""
        elif "bool" in text:
            plain[name] = False
        else:
            plain[name] = 0
    return {**plain, **fields}


def _worker_stats(**fields: Any) -> dict[str, Any]:
    body = _zeros(
        wire.WorkerStats,
        server=wire.WORKER_SERVER_NAME,
        state="ready",
        latency_ms={"p50": 0, "p99": 0},
    )
    body.pop("gpu")
    return {**body, **fields}


def _upstream(max_outstanding: int) -> dict[str, Any]:
    return _zeros(
        wire.UpstreamView,
        state="ready",
        latency_ms={"p50": 0, "p99": 0},
        max_outstanding=max_outstanding,
        first_byte_timeout_s=None,
        busy_after_s=None,
        engine=None,
        tokens=None,
        engine_load=None,
    )


def _router_stats(*caps: int) -> dict[str, Any]:
    return _zeros(
        wire.RouterStats,
        server=wire.ROUTER_SERVER_NAME,
        state="ready",
        workers=[_upstream(c) for c in caps],
        totals=_zeros(wire.RouterTotals),
    )


async def _slots(stats: Reply, **settings: Any) -> int:
    async def handler(method: str, path: str, body: Any) -> Reply:
        assert (method, path) == ("GET", "/stats")
        return stats

    async with Client(URL, transport=MemoryTransport({URL: handler}), **settings) as client:
        await client._size_slots()
        (ep,) = client.endpoints
        return ep.slots


def test_the_stats_bodies_here_are_what_the_wire_types_decode() -> None:
    for body, kind in (
        (_worker_stats(), wire.WorkerStats),
        (_router_stats(4), wire.RouterStats),
    ):
        wire.decode(msgspec.json.encode(body), kind)  # strict: raises on a wrong shape


async def test_a_worker_gets_two_batches_bounded_by_its_queue() -> None:
    assert await _slots(json_reply(200, _worker_stats(max_batch_size=16, max_queue=64))) == 32
    assert await _slots(json_reply(200, _worker_stats(max_batch_size=16, max_queue=20))) == 20
    # A fixed per-endpoint concurrency is the user's: a worker's /stats does not change it.
    fixed = json_reply(200, _worker_stats(max_batch_size=16, max_queue=64))
    assert await _slots(fixed, per_endpoint_concurrency=3) == 3


async def test_a_router_sums_its_upstreams_caps() -> None:
    assert await _slots(json_reply(200, _router_stats(8, 12))) == 20
    assert await _slots(json_reply(200, _router_stats(8, 12)), per_endpoint_concurrency=3) == 6


async def test_other_answers_leave_the_slots_alone() -> None:
    default = await _slots(json_reply(404, {}))
    assert await _slots(json_reply(200, {"server": "vllm", "workers": [1, 2]})) == default
    broken = _worker_stats(max_batch_size="sixteen")  # a wrong type: not decoded, not guessed
    assert await _slots(json_reply(200, broken)) == default
    assert await _slots(Reply(200, b"<html>not json</html>")) == default
