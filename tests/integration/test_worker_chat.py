"""``POST /v1/chat/completions`` for a user model of kind ``chat`` (OpenAI shape, SSE chunks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gpufleet.testing import ServerProcess, run_worker
from tests.integration._models import spec

ROUTE = "/v1/chat/completions"
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]


@pytest.fixture(scope="module")
def worker() -> Iterator[ServerProcess]:
    with run_worker(spec("EchoChat")) as w:
        yield w


async def _post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, await r.json()


async def test_completion_has_the_openai_shape(worker: ServerProcess) -> None:
    body = {
        "model": "echo-chat",
        "messages": MESSAGES,
        "max_tokens": 7,
        "temperature": 0.5,
        "seed": 3,
    }
    status, answer = await _post(worker.url + ROUTE, body)
    assert status == 200, answer
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["model"] == "echo-chat"
    [choice] = answer["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    # The model saw the messages and, through decode, max_tokens and the seed.
    assert choice["message"] == {
        "role": "assistant",
        "content": "echo: hello there (max_tokens=7) (seed=3)",
    }
    usage = answer["usage"]
    assert usage["prompt_tokens"] == 4  # whitespace words of the messages
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_is_chat_completion_chunks_then_done(worker: ServerProcess) -> None:
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    async with (
        aiohttp.ClientSession() as s,
        s.post(worker.url + ROUTE, json=body) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = await r.text()
    data = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "echo: hello there "
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content"),
        ({"messages": MESSAGES, "temperature": 9}, "temperature"),
        ({"messages": MESSAGES, "n": 2}, '"n"'),
        ({"messages": MESSAGES, "tools": []}, "tools"),
    ],
)
async def test_bad_requests_name_the_problem(
    worker: ServerProcess, body: dict[str, Any], needle: str
) -> None:
    status, answer = await _post(worker.url + ROUTE, body)
    assert status == 422
    assert needle in answer["error"]["message"]  # OpenAI's error object
    assert answer["error"]["type"] == "invalid_request_error"


async def test_a_model_that_counts_its_tokens_reports_them() -> None:
    with run_worker(spec("CountingChat")) as w:
        status, body = await _post(w.url + ROUTE, {"messages": MESSAGES})
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "four"
        assert body["usage"]["completion_tokens"] == 4
        assert body["usage"]["prompt_tokens"] == len(str(MESSAGES))
        stream_body = {
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with aiohttp.ClientSession() as s, s.post(w.url + ROUTE, json=stream_body) as r:
            events = [
                line[6:] for line in (await r.text()).split("\n") if line.startswith("data: ")
            ]
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "four"
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 11,
            "completion_tokens": 4,
            "total_tokens": 15,
        }
