"""LLM fleets (issue 11): the router in front of simulated engines, with its defaults.

Real router and engine processes on 127.0.0.1 (``gpufleet.testing.llm_engine``: continuous
batching and a prefix KV cache that really shortens time to first token).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import pytest

from gpufleet.testing import ServerProcess, run_router
from gpufleet.testing.llm_engine import run_engine
from tests.integration._router import get_json, wait_for, wait_state


def _body(tenant: int, question: int, max_tokens: int = 4) -> dict[str, Any]:
    system = f"You are the assistant of tenant {tenant}. " + f"Rule {tenant} applies. " * 300
    return {
        "model": "sim-llm",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": f"question {question}: what is {question} + {tenant}?"},
        ],
        "max_tokens": max_tokens,
    }


async def _chat(
    session: aiohttp.ClientSession, router: ServerProcess, body: dict[str, Any]
) -> tuple[int, str, dict[str, Any]]:
    async with session.post(router.url + "/v1/chat/completions", json=body) as resp:
        data = await resp.json(content_type=None)
        return resp.status, resp.headers.get("X-Gpufleet-Upstream", ""), data


@contextlib.contextmanager
def _fleet(n: int, *engine_args: str) -> Any:
    with contextlib.ExitStack() as stack:
        engines = [stack.enter_context(run_engine(*engine_args)) for _ in range(n)]
        router = stack.enter_context(run_router([e.url for e in engines]))
        yield engines, router


async def _ready(router: ServerProcess, engines: list[ServerProcess]) -> None:
    for e in engines:
        await wait_state(router.url, e.url, "ready", within=20)


async def test_a_tenant_stays_on_one_engine_and_the_tenants_spread() -> None:
    with _fleet(4) as (engines, router):
        await _ready(router, engines)
        where: dict[int, Counter[str]] = defaultdict(Counter)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for round_ in range(4):
                results = await asyncio.gather(
                    *(_chat(session, router, _body(t, round_)) for t in range(8))
                )
                for t, (status, upstream, data) in enumerate(results):
                    assert status == 200, data
                    where[t][upstream] += 1
                    if round_:
                        # Its engine had the system prompt cached.
                        assert data["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        assert all(len(c) == 1 for c in where.values()), where
        tenants_per_engine = Counter(next(iter(c)) for c in where.values())
        assert sorted(tenants_per_engine.values()) == [2, 2, 2, 2], tenants_per_engine
        for e in engines:
            assert (await get_json(e.url + "/stats"))["cache_hit_rate"] > 0.5
        # Tokens are counted per upstream from the answers' usage, and streams are timed.
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
            session.post(
                router.url + "/v1/chat/completions",
                json={
                    **_body(0, 99, max_tokens=8),
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            ) as resp,
        ):
            assert resp.status == 200
            await resp.read()
        stats = await get_json(router.url + "/stats")
        tokens = [w["tokens"] for w in stats["workers"]]
        assert sum(t["answers"] for t in tokens) == 33
        assert sum(t["completion"] for t in tokens) == 32 * 4 + 8
        assert sum(t["prompt"] for t in tokens) > 33 * 900  # ~920 tokens per prompt
        assert max(t["ttft_ms"]["p50"] for t in tokens) > 0
        prefix = stats["pools"]["default"]["prefix"]
        assert prefix["affine"] >= 24
        assert prefix["entries"] > 0


async def test_one_tenant_flooding_the_fleet_spreads_over_every_engine() -> None:
    with _fleet(4) as (engines, router):
        await _ready(router, engines)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            results = await asyncio.gather(
                *(_chat(session, router, _body(0, i, max_tokens=16)) for i in range(64))
            )
        assert {status for status, _, _ in results} == {200}
        got = Counter(upstream for _, upstream, _ in results)
        print(dict(got))
        assert len(got) == 4, got
        assert min(got.values()) >= 64 / 4 / 3, got


@pytest.mark.parametrize(("api", "engine", "cap"), [("sglang", "sglang", 32), ("vllm", "vllm", 32)])
async def test_an_engine_that_runs_32_gets_more_than_4_in_flight(
    api: str, engine: str, cap: int
) -> None:
    # SGLang states its limit (/get_server_info); vLLM only its load (/metrics).
    with _fleet(1, "--max-running", "32", "--api", api) as (engines, router):
        await _ready(router, engines)
        entry = (await get_json(router.url + "/stats"))["workers"][0]
        assert (entry["engine"], entry["max_outstanding"]) == (engine, cap)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            calls = [
                asyncio.create_task(_chat(session, router, _body(i, i, max_tokens=64)))
                for i in range(40)
            ]

            async def many_in_flight() -> bool:
                stats = await get_json(router.url + "/stats")
                return bool(stats["workers"][0]["in_flight"] > 4)

            await wait_for(many_in_flight, within=20, what="more than 4 in flight")
            results = await asyncio.gather(*calls)
        assert {status for status, _, _ in results} == {200}
        entry = (await get_json(router.url + "/stats"))["workers"][0]
        if api == "vllm":
            assert entry["engine_load"] is not None  # read after each health round
        assert 4 < entry["max_outstanding"] <= 64


async def test_other_paths_and_bodies_are_routed_as_before() -> None:
    with _fleet(2) as (engines, router):
        await _ready(router, engines)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.get(router.url + "/v1/models") as resp:
                assert resp.status == 200
                assert (await resp.json())["data"][0]["id"] == "sim-llm"
            # A body the router cannot read goes on as it came; the engine answers it.
            async with session.post(router.url + "/v1/chat/completions", data=b"{not json") as resp:
                assert resp.status == 400
            stats = await get_json(router.url + "/stats")
            assert stats["policy"] == "prefix"


async def test_v1_requests_go_to_the_pool_serving_their_model() -> None:
    with (
        run_engine("--model-name", "alpha") as alpha,
        run_engine("--model-name", "beta") as beta,
        run_router([alpha.url, f"b@{beta.url}"], "--health-interval", "0.2") as router,
    ):
        await _ready(router, [alpha, beta])
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def served_by(model: str) -> str:
                async with session.post(
                    router.url + "/v1/chat/completions", json={**body, "model": model}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                    return resp.headers["X-Gpufleet-Upstream"]

            async def beta_routed() -> bool:
                return await served_by("beta") == "w1"

            # No route names pool b: requests reach it by their model, once the router
            # has listed what each pool serves (after a health round).
            await wait_for(beta_routed, within=15, what="model beta routed to pool b")
            assert await served_by("alpha") == "w0"
            assert await served_by("beta") == "w1"
            async with session.get(router.url + "/v1/models") as resp:
                cards = {c["id"]: c["pools"] for c in (await resp.json())["data"]}
        assert cards == {"alpha": ["default"], "beta": ["b"]}
