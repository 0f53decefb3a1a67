"""Token accounting of LLM answers (usage in JSON, in a stream's last chunk, or events)."""

from __future__ import annotations

import json

from gpufleet.router.tokens import TokenCounts, stream_usage, usage_of


def _event(data: object) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def test_usage_is_read_from_openai_and_sglang_answers() -> None:
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    assert usage_of(body.encode()) == (7, 3)
    sglang = {"text": "x", "meta_info": {"prompt_tokens": 5, "completion_tokens": 2}}
    assert usage_of(json.dumps(sglang).encode()) == (5, 2)
    assert usage_of(b'{"choices": []}') is None
    assert usage_of(b"not json") is None


def test_a_streams_usage_is_its_last_chunk_else_its_events() -> None:
    chunks = [_event({"choices": [{"delta": {"content": "a"}}]}) for _ in range(4)]
    with_usage = b"".join(
        [*chunks, _event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})]
    )
    assert stream_usage(with_usage + b"data: [DONE]\n\n") == (9, 4)
    counts = TokenCounts()
    counts.add_stream(b"".join(chunks) + b"data: [DONE]\n\n", 5, 0.05, 0.3)
    assert (counts.prompt, counts.completion) == (0, 4)  # [DONE] is not a token
    assert counts.ttft[0] == 0.05
    assert abs(counts.itl[0] - 0.1) < 1e-9  # 0.3 s over the 3 gaps between 4 tokens
    snap = counts.snapshot()
    assert snap.answers == 1
    assert (snap.ttft_ms.p50, snap.ttft_ms.p99) == (50.0, 50.0)
