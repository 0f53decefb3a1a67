"""Dispatch rules of ``Client`` over an in-memory transport: retries, cool-down, bounds.

The tests run on virtual time (``_virtual_time.VirtualTimeLoop``): sleeps and timeouts
take no wall time, and the dispatcher reads the loop's clock, so the bounds below are
exact, not wall-clock guesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from gpufleet.client import Client, Item
from gpufleet.client._transport import MemoryTransport, Reply, json_reply
from gpufleet.errors import ClientClosed, ClientError, ConfigError, JobFailed
from tests.unit._virtual_time import on_virtual_time

A, B = "http://a", "http://b"


def _now() -> float:
    """The loop's (virtual) time."""
    return asyncio.get_running_loop().time()


class FakeServer:
    """An endpoint: answers /predict with ``{"output": body}`` or a scripted failure."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.fail_with: list[Reply] = []  # consumed one per /predict
        self.fail_on: dict[str, Reply] = {}  # inputs that always fail
        self.healthy = True
        self.bodies: list[Any] = []
        self.probes = 0
        self.times: list[float] = []

    async def __call__(self, method: str, path: str, body: Any) -> Reply:
        if path == "/health":
            self.probes += 1
            return json_reply(200 if self.healthy else 503, {})
        if path == "/stats":
            return json_reply(404, {})
        self.bodies.append(body)
        self.times.append(_now())
        await asyncio.sleep(self.delay)
        if isinstance(body, dict) and str(body.get("input")) in self.fail_on:
            return self.fail_on[str(body["input"])]
        if self.fail_with:
            return self.fail_with.pop(0)
        return json_reply(200, {"output": body})


def fast(**settings: Any) -> dict[str, Any]:
    base = {"retry_base_s": 0.01, "retry_max_s": 0.05, "cooldown_base_s": 0.05}
    return {**base, **settings}


@on_virtual_time
async def test_seeds_and_order() -> None:
    a = FakeServer()
    client = Client(A, transport=MemoryTransport({A: a}), seed=10)
    results = await client.run(["x", Item("y", seed=1), Item("z", parameters={"k": 1})])
    assert [r.output for r in results] == [
        {"input": "x", "seed": 10},
        {"input": "y", "seed": 1},
        {"input": "z", "seed": 12, "parameters": {"k": 1}},
    ]
    assert all(r.ok and r.attempts == 1 and r.endpoint == A for r in results)


@on_virtual_time
async def test_retryable_failure_goes_to_another_endpoint() -> None:
    a, b = FakeServer(), FakeServer()
    a.fail_with = [json_reply(500, {"error": "ModelError", "message": "boom"})]
    client = Client([A, B], transport=MemoryTransport({A: a, B: b}), **fast())
    (result,) = await client.run(["x"])
    assert result.ok
    assert result.attempts == 2
    assert result.tried[0] != result.tried[1]


@on_virtual_time
async def test_4xx_is_final_with_its_reason() -> None:
    a = FakeServer()
    a.fail_with = [json_reply(422, {"error": "Unprocessable", "message": "bad field"})]
    client = Client(A, transport=MemoryTransport({A: a}), **fast())
    (result,) = await client.run(["x"])
    assert result.status == "failed"
    assert result.attempts == 1
    assert "422" in (result.error or "")
    assert "bad field" in (result.error or "")
    assert len(a.bodies) == 1


@on_virtual_time
async def test_max_attempts_then_failed_and_the_rest_still_done() -> None:
    a = FakeServer()
    boom = json_reply(500, {"error": "ModelError", "message": "boom"})
    a.fail_on = {"bad": boom}
    client = Client(A, transport=MemoryTransport({A: a}), max_attempts=3, **fast())
    results = await client.run(["bad", "ok1", "ok2"])
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1
    assert failed[0].attempts == 3
    assert "gave up after 3" in (failed[0].error or "")
    assert sum(r.ok for r in results) == 2


@on_virtual_time
async def test_dead_endpoint_is_cooled_down_and_reprobed() -> None:
    a = FakeServer()
    transport = MemoryTransport({A: a})  # B refuses connections
    client = Client([A, B], transport=transport, failure_threshold=2, **fast())
    results = await client.run(range(20))
    assert all(r.ok for r in results)
    b_posts = [u for m, u in transport.calls if m == "POST" and u.startswith(B)]
    # B never answered /stats: it must pass a probe first, and each probe fails, so it
    # gets no item at all (a server that answers, then fails, is cooled: see below).
    assert b_posts == []
    assert any(m == "GET" and u == f"{B}/health" for m, u in transport.calls)
    ep_b = client.endpoints[1]
    assert ep_b.state in {"cooling", "probing"}
    assert ep_b.served == 0


@on_virtual_time
async def test_recovered_endpoint_takes_items_again() -> None:
    a, b = FakeServer(delay=0.02), FakeServer(delay=0.02)
    down = json_reply(502, {"error": "gone"})
    b.fail_with = [down, down]
    b.healthy = True
    client = Client([A, B], transport=MemoryTransport({A: a, B: b}), failure_threshold=2, **fast())
    results = await client.run(range(40))
    assert all(r.ok for r in results)
    assert client.endpoints[1].served > 0
    assert b.probes >= 1


@on_virtual_time
async def test_retry_after_pauses_the_endpoint() -> None:
    a = FakeServer()
    busy = json_reply(503, {"error": "WorkerOverloaded", "retry_after_s": 0.3})
    a.fail_with = [busy]
    client = Client(A, transport=MemoryTransport({A: a}), **fast())
    (result,) = await client.run(["x"])
    assert result.ok
    assert a.times[1] - a.times[0] >= 0.29
    # Being busy is not being down: no cool-down, no probe.
    assert a.probes == 0


@on_virtual_time
async def test_all_endpoints_down_ends_within_the_bound() -> None:
    client = Client(
        [A, B],
        transport=MemoryTransport({}),
        unavailable_timeout=0.3,
        failure_threshold=1,
        max_attempts=100,
        **fast(),
    )
    start = _now()
    results = await client.run(range(5))
    assert 0.29 < _now() - start < 0.4  # --unavailable-timeout, on the loop's clock
    assert all(r.status == "failed" for r in results)
    assert any("no endpoint reachable" in (r.error or "") for r in results)


@on_virtual_time
async def test_max_attempts_bounds_an_item_against_silent_endpoints() -> None:
    # Nothing listens: every failed probe, while no endpoint is up, is a try for each item.
    client = Client([A, B], transport=MemoryTransport({}), max_attempts=3, **fast())
    start = _now()
    results = await client.run(range(3))
    assert _now() - start < 0.5  # three probes at the cool-downs' pace
    assert [r.attempts for r in results] == [3, 3, 3]
    for r in results:
        assert r.error is not None
        assert r.error.startswith("gave up after 3 attempt(s): GET http://")
        assert r.error.endswith("/health: connection refused")
        assert set(r.tried) == {A, B}


@on_virtual_time
async def test_deadline_bounds_the_job() -> None:
    a = FakeServer(delay=5)
    client = Client(A, transport=MemoryTransport({A: a}), deadline=0.3, **fast())
    start = _now()
    results = await client.run(range(4))
    assert 0.29 < _now() - start < 0.4  # the deadline, not the endpoint's 5 s
    assert all(r.status == "failed" for r in results)


@on_virtual_time
async def test_round_robin_assigns_item_i_to_endpoint_i_mod_n() -> None:
    a, b = FakeServer(), FakeServer()
    client = Client([A, B], transport=MemoryTransport({A: a, B: b}), dispatch="round-robin")
    results = await client.run(range(6))
    assert [r.endpoint for r in results] == [A, B, A, B, A, B]


@on_virtual_time
async def test_pull_gives_a_slow_endpoint_less() -> None:
    a, b = FakeServer(delay=0.005), FakeServer(delay=0.05)
    client = Client([A, B], transport=MemoryTransport({A: a, B: b}))
    results = await client.run(range(60))
    served = {ep.url: ep.served for ep in client.endpoints}
    assert all(r.ok for r in results)
    assert served[A] > 3 * served[B]


def test_duplicates_are_merged_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gpufleet.client"):
        client = Client([A, A + "/", B], transport=MemoryTransport({}))
    assert client.config.endpoints == (A, B)
    assert "more than once" in caplog.text


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="no endpoints"):
        Client([])
    with pytest.raises(ConfigError, match="http"):
        Client("gpu0:8000")
    with pytest.raises(ConfigError, match="unknown Client setting"):
        Client(A, no_such_setting=1)


@on_virtual_time
async def test_predict_and_closed_client() -> None:
    a = FakeServer()
    a.fail_with = [json_reply(400, {"error": "BadRequest", "message": "nope"})]
    client = Client(A, transport=MemoryTransport({A: a}))
    with pytest.raises(JobFailed, match="nope"):
        await client.predict("x")
    assert await client.predict("y", seed=3) == {"input": "y", "seed": 3}
    await client.aclose()
    with pytest.raises(ClientClosed):
        await client.run(["x"])


def test_sync_wrappers() -> None:
    a = FakeServer()
    client = Client(A, transport=MemoryTransport({A: a}), seed=0)
    assert [r.output for r in client.run_sync(["p", "q"])] == [
        {"input": "p", "seed": 0},
        {"input": "q", "seed": 1},
    ]
    assert client.predict_sync("z") == {"input": "z", "seed": 0}


@on_virtual_time
async def test_sync_wrapper_inside_a_loop_says_what_to_do() -> None:
    client = Client(A, transport=MemoryTransport({}))
    with pytest.raises(ClientError, match="await"):
        client.run_sync(["x"])


@on_virtual_time
async def test_breaking_out_of_stream_leaves_no_tasks() -> None:
    a = FakeServer(delay=0.01)
    client = Client(A, transport=MemoryTransport({A: a}))
    before = len(asyncio.all_tasks())
    async with contextlib.aclosing(client.stream(range(50))) as results:
        async for _ in results:
            break
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before


@on_virtual_time
async def test_a_straggler_declines_what_the_fast_endpoint_finishes_sooner() -> None:
    a, b = FakeServer(delay=0.01), FakeServer(delay=0.5)
    client = Client([A, B], transport=MemoryTransport({A: a, B: b}), per_endpoint_concurrency=1)
    start = _now()
    results = await client.run(range(60))
    wall = _now() - start
    assert all(r.ok for r in results)
    # B's first answer (at 0.5 s) shows it is 50 times slower; A finishes the rest by
    # about 0.65 s, so B takes nothing more (taking one would end the job at 1 s), where
    # a static split would have given it 30 items (15 s).
    assert client.endpoints[1].served == 1
    assert wall < 0.9


@on_virtual_time
async def test_an_item_that_is_not_json_fails_alone() -> None:
    a = FakeServer()
    client = Client(A, transport=MemoryTransport({A: a}))
    results = await client.run(["ok", {1, 2}, "ok too"])
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert "cannot be sent as JSON" in (results[1].error or "")
    assert results[1].attempts == 1


@on_virtual_time
async def test_concurrent_calls_share_the_endpoint_slots() -> None:
    in_flight, peak = 0, 0

    async def server(method: str, path: str, body: Any) -> Reply:
        nonlocal in_flight, peak
        if path != "/predict":
            return json_reply(404, {})
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return json_reply(200, {"output": body["input"]})

    client = Client(A, transport=MemoryTransport({A: server}), per_endpoint_concurrency=2)
    outputs = await asyncio.wait_for(
        asyncio.gather(*(client.predict(i) for i in range(20)), client.run(range(5))), 10
    )
    assert list(outputs[:20]) == list(range(20))
    assert peak == 2


@on_virtual_time
async def test_a_router_with_no_ready_worker_is_waited_for_not_failed() -> None:
    a = FakeServer()
    none_ready = json_reply(503, {"error": "NoHealthyBackend", "retry_after_s": 1.0})
    a.fail_with = [none_ready] * 3
    a.healthy = False
    client = Client(A, transport=MemoryTransport({A: a}), failure_threshold=3, **fast())

    async def recover() -> None:
        await asyncio.sleep(0.4)
        a.healthy = True

    results, _ = await asyncio.gather(client.run(range(10)), recover())
    assert all(r.ok for r in results), [r.error for r in results]
    assert max(r.attempts for r in results) == 2  # waiting for the probe costs no attempt
    assert a.probes >= 2
