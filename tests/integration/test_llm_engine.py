"""The simulated LLM engine as a real process: OpenAI shapes, cache hits, metrics, leavers."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gpufleet.testing import EngineConfig, ServerProcess, run_engine
from gpufleet.testing.llm import make_app, render_chat, tokenize
from tests.integration._router import get_json, wait_for

TIMEOUT = aiohttp.ClientTimeout(total=20)
SYSTEM = " ".join(f"rule{i}" for i in range(1500))  # ~1,500 tokens


@pytest.fixture(scope="module")
def engine() -> Iterator[ServerProcess]:
    with run_engine("--model-name", "sim-test") as server:
        yield server


def chat(system: str, user: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return {"model": "sim-test", "messages": messages, **extra}


async def read_events(resp: aiohttp.ClientResponse) -> tuple[list[Any], float | None]:
    """The SSE events of ``resp`` (JSON, or the string "[DONE]") and the first content's time."""
    started = time.perf_counter()
    events: list[Any] = []
    first: float | None = None
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            assert event.startswith(b"data: "), event
            data = event[len(b"data: ") :]
            if data == b"[DONE]":
                events.append("[DONE]")
                continue
            obj = json.loads(data)
            has_text = any(c.get("delta", {}).get("content") or c.get("text")
                           for c in obj.get("choices", []))  # fmt: skip
            if first is None and (has_text or obj.get("text")):
                first = time.perf_counter() - started
            events.append(obj)
    assert buffer == b""
    return events, first


def metric(text: str, name: str) -> float:
    """The value of sample ``name`` (any labels) in Prometheus text."""
    found = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    assert found is not None, f"{name} missing from /metrics"
    return float(found.group(1))


async def test_chat_answer_has_the_openai_shape_and_usage(engine: ServerProcess) -> None:
    body = chat("be brief", "hello there", max_tokens=5)
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(engine.url + "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        answer = await resp.json()
        headers = resp.headers
    assert not [h for h in headers if h.lower().startswith("x-gpufleet")]
    assert headers["Server"] == "uvicorn"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "sim-test"
    assert isinstance(answer["created"], int)
    [choice] = answer["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert len(tokenize(choice["message"]["content"])) == 5
    prompt = len(tokenize(render_chat([("system", "be brief"), ("user", "hello there")])))
    assert answer["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 5,
        "total_tokens": prompt + 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_chat_stream_sends_chunks_then_usage_then_done(engine: ServerProcess) -> None:
    body = chat("stream me", "go", max_tokens=6, stream=True)
    body["stream_options"] = {"include_usage": True}
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(engine.url + "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events, _ = await read_events(resp)
    assert events[-1] == "[DONE]"
    role, *tokens, usage = events[:-1]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(tokens) == 6
    for i, chunk in enumerate(tokens):
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"] == role["id"]
        [choice] = chunk["choices"]
        assert choice["delta"]["content"]
        assert choice["finish_reason"] == ("length" if i == 5 else None)
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 6
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 6
    # The engine's own account of the request, for benchmarks (not an OpenAI field).
    timing = usage["sim_timing"]
    assert timing["engine"] == int(engine.url.rsplit(":", 1)[1])
    assert 0.0 <= timing["queued_ms"] <= timing["ttft_ms"]
    assert timing["prompt_tokens"] == usage["usage"]["prompt_tokens"]
    assert timing["step_prefill_tokens"] >= timing["prompt_tokens"] - timing["cached_tokens"]
    # Without include_usage: no usage chunk.
    del body["stream_options"]
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(engine.url + "/v1/chat/completions", json=body) as resp,
    ):
        events, _ = await read_events(resp)
    assert len(events) == 1 + 6 + 1
    assert all("usage" not in e for e in events[:-1])


async def test_completions_generate_and_info_routes(engine: ServerProcess) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.post(
            engine.url + "/v1/completions", json={"prompt": "a b c d", "max_tokens": 3}
        ) as resp:
            done = await resp.json()
        assert done["object"] == "text_completion"
        assert len(tokenize(done["choices"][0]["text"])) == 3
        assert done["usage"]["prompt_tokens"] == 4
        text = "one two three " * 20  # 60 tokens: 3 full blocks
        body: dict[str, Any] = {"text": text, "sampling_params": {"max_new_tokens": 4}}
        async with session.post(engine.url + "/generate", json=body) as resp:
            gen = await resp.json()
        assert len(tokenize(gen["text"])) == 4
        meta = gen["meta_info"]
        assert (meta["prompt_tokens"], meta["completion_tokens"]) == (60, 4)
        assert meta["finish_reason"] == {"type": "length", "length": 4}
        async with session.post(engine.url + "/generate", json={**body, "stream": True}) as resp:
            events, _ = await read_events(resp)
        assert events[-1] == "[DONE]"
        texts = [e["text"] for e in events[:-1]]
        assert len(texts) == 4
        assert all(b.startswith(a) for a, b in itertools.pairwise(texts))  # cumulative
        assert texts[-1] == gen["text"]  # the same prompt gives the same words
        assert events[-2]["meta_info"]["cached_tokens"] == 48
        for bad in ({"prompt": ["a", "b"]}, {"prompt": 3}, {"prompt": "a", "max_tokens": -1}):
            async with session.post(engine.url + "/v1/completions", json=bad) as resp:
                assert resp.status == 400
                assert "message" in (await resp.json())["error"]
        async with session.post(engine.url + "/v1/chat/completions", data=b"{") as resp:
            assert resp.status == 400
        async with session.get(engine.url + "/health_generate") as resp:
            assert resp.status == 200
    models = await get_json(engine.url + "/v1/models")
    assert [m["id"] for m in models["data"]] == ["sim-test"]
    info = await get_json(engine.url + "/get_server_info")
    assert info["max_running_requests"] == 64
    assert info["max_total_num_tokens"] == 2048 * 16
    assert (await get_json(engine.url + "/server_info"))["max_running_requests"] == 64
    model = await get_json(engine.url + "/get_model_info")
    assert model == {"model_path": "sim-test", "tokenizer_path": "sim-test", "is_generation": True}
    assert await get_json(engine.url + "/health") == {}


async def test_a_cached_prefix_shortens_time_to_first_token() -> None:
    # 100 µs per uncached prompt token: a cold 1,500-token prefill takes 150 ms more than a hit.
    with run_engine("--prefill-us-per-token", "100") as engine:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

            async def ttft(system: str, user: str) -> tuple[float, int]:
                body = chat(system, user, max_tokens=2, stream=True)
                body["stream_options"] = {"include_usage": True}
                async with session.post(engine.url + "/v1/chat/completions", json=body) as resp:
                    events, first = await read_events(resp)
                assert first is not None
                return first, events[-2]["usage"]["prompt_tokens_details"]["cached_tokens"]

            cold = [await ttft(f"tenant{t} {SYSTEM}", "first question") for t in range(3)]
            warm = [await ttft(f"tenant{t} {SYSTEM}", f"question {t}") for t in range(3)]
    print("ttft cold (s):", [round(t, 4) for t, _ in cold], "warm:", [round(t, 4) for t, _ in warm])
    assert all(cached == 0 for _, cached in cold)
    assert all(cached >= 1488 for _, cached in warm)
    assert statistics.median(t for t, _ in warm) < 0.5 * statistics.median(t for t, _ in cold)


async def test_metrics_follow_the_running_batch() -> None:
    with run_engine("--max-running", "4", "--model-name", "m1") as engine:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

            async def one(i: int) -> dict[str, Any]:
                body = chat(f"job {i} " + SYSTEM[:2000], "go", max_tokens=120)
                async with session.post(engine.url + "/v1/chat/completions", json=body) as resp:
                    answer: dict[str, Any] = await resp.json()
                    return answer

            async def metrics() -> str:
                async with session.get(engine.url + "/metrics") as resp:
                    assert resp.headers["Content-Type"].startswith("text/plain")
                    return await resp.text()

            tasks = [asyncio.create_task(one(i)) for i in range(6)]
            try:
                seen: list[str] = []

                async def busy() -> bool:
                    seen.append(await metrics())
                    return metric(seen[-1], "vllm:num_requests_running") == 4

                await wait_for(busy, within=5, what="4 running")
                text = seen[-1]
                assert metric(text, "vllm:num_requests_waiting") == 2
                assert 0 < metric(text, "vllm:kv_cache_usage_perc") <= 1
                assert 'model_name="m1"' in text
                answers = await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
            text = await metrics()
    prompt = sum(a["usage"]["prompt_tokens"] for a in answers)
    assert metric(text, "vllm:num_requests_running") == 0
    assert metric(text, "vllm:num_requests_waiting") == 0
    assert metric(text, "vllm:kv_cache_usage_perc") == 0
    assert metric(text, "vllm:prompt_tokens_total") == prompt
    assert metric(text, "vllm:generation_tokens_total") == 6 * 120
    assert metric(text, "vllm:prefix_cache_queries_total") == prompt
    assert 0 <= metric(text, "vllm:prefix_cache_hits_total") < prompt
    assert metric(text, "vllm:time_to_first_token_seconds_count") == 6
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text


async def test_a_caller_who_leaves_frees_its_slot() -> None:
    with run_engine("--max-running", "1") as engine:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            body = chat("long", "story", max_tokens=5000, stream=True)  # 40 s of tokens
            async with session.post(engine.url + "/v1/chat/completions", json=body) as resp:
                got = 0
                async for _ in resp.content:
                    got += 1
                    if got >= 6:  # a few events, then leave
                        break
                resp.close()
            stats = await get_json(engine.url + "/stats")
            assert stats["running"] + stats["cancelled"] == 1

            async def freed() -> bool:
                stats = await get_json(engine.url + "/stats")
                return bool(stats["running"] == 0 and stats["cancelled"] == 1)

            await wait_for(freed, within=3, what="the stream's slot freed")
            # A non-streaming caller who times out leaves too.
            with pytest.raises(TimeoutError):
                await session.post(
                    engine.url + "/v1/chat/completions",
                    json=chat("long", "story", max_tokens=5000),
                    timeout=aiohttp.ClientTimeout(total=0.3),
                )

            async def freed_again() -> bool:
                stats = await get_json(engine.url + "/stats")
                return bool(stats["running"] == 0 and stats["cancelled"] == 2)

            await wait_for(freed_again, within=3, what="the answer's slot freed")
            # The one slot serves the next caller at once.
            started = time.monotonic()
            async with session.post(
                engine.url + "/v1/chat/completions", json=chat("short", "q", max_tokens=2)
            ) as resp:
                assert resp.status == 200
            assert time.monotonic() - started < 2.0
        assert "Traceback" not in engine.log()
        assert "Error" not in engine.log()


async def test_api_flag_picks_the_routes_in_process() -> None:
    # make_app serves in-process too; --api vllm hides SGLang's routes, --api sglang /metrics.
    for api, present, absent in (
        ("vllm", "/metrics", "/get_server_info"),
        ("sglang", "/get_server_info", "/metrics"),
    ):
        server = TestServer(make_app(EngineConfig(api=api)))
        async with TestClient(server) as client:
            assert (await client.get(present)).status == 200
            assert (await client.get(absent)).status == 404
            resp = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert (await resp.json())["usage"]["completion_tokens"] == 2
