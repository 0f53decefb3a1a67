"""What real worker and router processes answer decodes into the wire types, strictly.

Strict: every body decodes into its type, and encoding the decoded value gives back the
same JSON — no field the type lacks (it would be dropped), none it adds, every type kept.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import aiohttp

from gpufleet import wire
from gpufleet.testing import run_router, run_worker

from ._router import TOKEN, wait_state

_AUTH = {"Authorization": f"Bearer {TOKEN}"}
T = TypeVar("T")


async def _call(
    method: str, url: str, *, json_body: object = None, auth: bool = False
) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, url, json=json_body, headers=_AUTH if auth else None) as r,
    ):
        return r.status, await r.read()


def _strict(body: bytes, into: type[T]) -> T:
    value = wire.decode(body, into)
    as_sent: Any = json.loads(body)
    assert json.loads(wire.encode(value)) == as_sent, f"{into.__name__} differs from {as_sent}"
    return value


async def test_a_worker_and_a_router_answer_in_the_wire_types() -> None:
    with run_worker("synthetic") as worker:
        # A request that fails and one that succeeds: recent_errors and latency are filled.
        status, body = await _call("POST", worker.url + "/predict", json_body={"nope": 1})
        assert status == 422
        error = _strict(body, wire.ErrorBody)
        assert error.code is wire.ErrorCode.UNPROCESSABLE
        status, _ = await _call("POST", worker.url + "/predict", json_body={"input": [1.0]})
        assert status == 200

        status, body = await _call("GET", worker.url + "/health")
        assert (status, _strict(body, wire.HealthBody).status) == (200, wire.WorkerState.READY)

        status, body = await _call("GET", worker.url + "/stats")
        stats = _strict(body, wire.WorkerStats)
        assert (stats.server, stats.state) == (wire.WORKER_SERVER_NAME, wire.WorkerState.READY)
        assert stats.served == 1
        assert [e.error for e in stats.recent_errors] == [wire.ErrorCode.UNPROCESSABLE]
        assert wire.decode(body, wire.WorkerCapacity).max_batch_size == stats.max_batch_size

        status, body = await _call("POST", worker.url + "/v1/embeddings", json_body={})
        assert status == 404  # a synthetic model serves no embeddings: OpenAI's shape
        assert _strict(body, wire.OpenAIErrorBody).error.code == wire.ErrorCode.NOT_SERVED
        assert wire.error_name_of(body) == wire.ErrorCode.NOT_SERVED

        with run_router([worker.url], "--admin-token", TOKEN) as router:
            await wait_state(router.url, worker.url, "ready", within=10)
            status, body = await _call("GET", router.url + "/health")
            assert (status, _strict(body, wire.HealthBody).status) == (200, "ready")

            status, body = await _call("GET", router.url + "/stats")
            rstats = _strict(body, wire.RouterStats)
            assert rstats.state is wire.RouterState.READY
            assert [u.state for u in rstats.workers] == [wire.UpstreamState.READY]
            assert rstats.workers[0].gpufleet_worker
            assert set(rstats.pools) == {"default"}

            status, body = await _call("GET", router.url + "/admin/workers", auth=True)
            listed = _strict(body, wire.UpstreamList).workers
            assert [u.url for u in listed] == [worker.url]

            add = wire.to_builtins(wire.AddUpstream(url=worker.url, pool="other", weight=2))
            status, body = await _call(
                "POST", router.url + "/admin/workers", json_body=add, auth=True
            )
            added = _strict(body, wire.UpstreamView)
            assert (status, added.pool, added.weight) == (201, "other", 2.0)

            status, body = await _call(
                "POST", router.url + f"/admin/workers/{added.id}/drain", auth=True
            )
            assert _strict(body, wire.UpstreamView).state is wire.UpstreamState.DRAINING

            status, body = await _call(
                "POST", router.url + "/admin/workers", json_body={"url": 3}, auth=True
            )
            assert status == 400
            assert _strict(body, wire.ErrorBody).code is wire.ErrorCode.BAD_REQUEST

            status, body = await _call("GET", router.url + "/admin/workers")
            assert status == 401
            assert _strict(body, wire.ErrorBody).code is wire.ErrorCode.UNAUTHORIZED
