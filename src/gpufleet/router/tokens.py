"""Token accounting for LLM answers, per upstream: tokens in and out, TTFT, inter-token time.

Counts come from the ``usage`` an OpenAI-style answer carries (a JSON answer's, or a
stream's last chunk when the caller asked ``stream_options.include_usage``; SGLang's
``meta_info``); a stream without it counts its ``data:`` events, less ``[DONE]``, as
completion tokens. For streams the router also measures the time to the first body byte
(TTFT as the client sees it, less the network) and the mean gap between events after it
(inter-token latency), one sample per stream: no clock is read per event.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import msgspec

from gpufleet._percentile import percentile_ms
from gpufleet.wire import LatencyMs, TokenStats

#: Samples of TTFT and inter-token latency kept per upstream.
WINDOW: Final = 512


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Meta(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Answer(msgspec.Struct):
    usage: _Usage | None = None
    meta_info: _Meta | None = None


_DECODER = msgspec.json.Decoder(_Answer)


def usage_of(data: bytes) -> tuple[int, int] | None:
    """``(prompt, completion)`` tokens an answer body (or one SSE data line) reports."""
    try:
        answer = _DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested past the limit
        return None
    if answer.usage is not None:
        return answer.usage.prompt_tokens, answer.usage.completion_tokens
    if answer.meta_info is not None:
        return answer.meta_info.prompt_tokens, answer.meta_info.completion_tokens
    return None


def stream_usage(tail: bytes) -> tuple[int, int] | None:
    """The usage in the last ``data:`` events of a stream that has one, if any."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        at = tail.rfind(b'"meta_info"')
        if at < 0:
            return None
    start = tail.rfind(b"data:", 0, at)
    if start < 0:
        return None
    end = tail.find(b"\n", at)
    return usage_of(tail[start + 5 : end if end >= 0 else len(tail)].strip())


class TokenCounts:
    """One upstream's LLM token counters."""

    __slots__ = ("answers", "completion", "itl", "prompt", "ttft")

    def __init__(self) -> None:
        self.answers = 0
        self.prompt = 0
        self.completion = 0
        self.ttft: deque[float] = deque(maxlen=WINDOW)
        self.itl: deque[float] = deque(maxlen=WINDOW)

    def add(self, usage: tuple[int, int] | None) -> None:
        """Count one answer's tokens."""
        self.answers += 1
        if usage is not None:
            self.prompt += usage[0]
            self.completion += usage[1]

    def add_stream(self, tail: bytes, events: int, ttft_s: float | None, rest_s: float) -> None:
        """Count one finished stream: its last bytes, its events and its timing."""
        usage = stream_usage(tail)
        if usage is None:
            usage = (0, max(0, events - (1 if b"[DONE]" in tail else 0)))
        self.add(usage)
        if ttft_s is not None:
            self.ttft.append(ttft_s)
            if usage[1] > 1:
                self.itl.append(rest_s / (usage[1] - 1))

    def snapshot(self) -> TokenStats:
        """The ``tokens`` entry of an upstream in ``/stats``."""
        ttft = sorted(self.ttft)
        itl = sorted(self.itl)
        return TokenStats(
            answers=self.answers,
            prompt=self.prompt,
            completion=self.completion,
            ttft_ms=LatencyMs(p50=percentile_ms(ttft, 0.5), p99=percentile_ms(ttft, 0.99)),
            itl_ms=LatencyMs(p50=percentile_ms(itl, 0.5), p99=percentile_ms(itl, 0.99)),
        )
