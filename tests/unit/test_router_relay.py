"""The stream relay: every chunk passes through, and a stream's usage is found at its end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import cast

from aiohttp import web

from gpufleet.router.http1 import Response
from gpufleet.router.relay import relay
from gpufleet.router.tokens import TokenCounts
from gpufleet.router.watch import AttemptWatch


class _Answer:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class _Client:
    def __init__(self) -> None:
        self.body = b""
        self.ended = False

    async def write(self, data: bytes) -> None:
        self.body += data

    async def write_eof(self) -> None:
        self.ended = True


class _Watch:
    writes = 0
    writing = False


def _stream(tokens: int, usage: bool) -> bytes:
    events = [
        b"data: " + json.dumps({"choices": [{"delta": {"content": f"t{i} "}}]}).encode()
        for i in range(tokens)
    ]
    if usage:
        events.append(
            b"data: "
            + json.dumps(
                {"choices": [], "usage": {"prompt_tokens": 1234, "completion_tokens": tokens}}
            ).encode()
        )
    events.append(b"data: [DONE]")
    return b"\n\n".join(events) + b"\n\n"


async def _relay(chunks: list[bytes]) -> tuple[_Client, TokenCounts, _Watch]:
    client, counts, watch = _Client(), TokenCounts(), _Watch()
    ticks = iter(range(100_000))
    await relay(
        cast(Response, _Answer(chunks)),
        cast(web.StreamResponse, client),
        cast(AttemptWatch, watch),
        lambda: counts,
        0.0,
        lambda: float(next(ticks)),
    )
    return client, counts, watch


async def test_a_usage_cut_into_tiny_chunks_is_found() -> None:
    body = _stream(300, usage=True)
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    client, counts, watch = await _relay(chunks)
    assert client.body == body
    assert client.ended
    assert watch.writes == len(chunks)
    assert (counts.prompt, counts.completion) == (1234, 300)


async def test_a_stream_larger_than_the_tail_in_one_chunk() -> None:
    body = _stream(2000, usage=True)
    _, counts, _ = await _relay([body])
    assert (counts.prompt, counts.completion) == (1234, 2000)


async def test_without_usage_the_events_are_counted() -> None:
    body = _stream(40, usage=False)
    # One event per chunk, as an engine writes them (a "data:" cut in two is not counted).
    chunks = [event + b"\n\n" for event in body.split(b"\n\n") if event]
    _, counts, _ = await _relay(chunks)
    assert (counts.prompt, counts.completion) == (0, 40)
    assert counts.ttft  # one TTFT sample: the first chunk's time
