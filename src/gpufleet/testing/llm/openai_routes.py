"""OpenAI's ``/v1/chat/completions`` and ``/v1/completions``, answered and streamed."""

from __future__ import annotations

from aiohttp import web

from gpufleet.testing.llm._answer import (
    ENGINE,
    answer_head,
    finish_reason,
    local_port,
    read_job,
    run_job,
    sse,
    timing,
    usage,
)
from gpufleet.testing.llm.bodies import chat_job, completion_job
from gpufleet.testing.llm.scheduler import Sequence


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    job = await read_job(request, chat_job)
    if isinstance(job, web.Response):
        return job
    model = request.app[ENGINE].cfg.model_name
    port = local_port(request)
    head = answer_head("chat.completion.chunk", "chatcmpl", model)
    usage_field = {"usage": None} if job.include_usage else {}

    def chunks(seq: Sequence, start: int, stop: int) -> bytes:
        out = []
        for i in range(start, stop):
            delta = {"role": "assistant", "content": ""} if i == 0 else None
            if delta is not None:
                choice0 = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                out.append(sse({**head, "choices": [choice0], **usage_field}))
            last = i == stop - 1
            choice = {
                "index": 0,
                "delta": {"content": seq.token(i)},
                "logprobs": None,
                "finish_reason": finish_reason(job, seq) if last else None,
            }
            out.append(sse({**head, "choices": [choice], **usage_field}))
        return b"".join(out)

    def tail(seq: Sequence) -> bytes:
        if not job.include_usage:
            return b""
        return sse({**head, "choices": [], "usage": usage(seq), "sim_timing": timing(seq, port)})

    def answer(seq: Sequence) -> object:
        message = {"role": "assistant", "content": seq.text()}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason(job, seq),
        }
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(seq)}

    return await run_job(request, job, chunks, tail, answer)


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions``."""
    job = await read_job(request, completion_job)
    if isinstance(job, web.Response):
        return job
    head = answer_head("text_completion", "cmpl", request.app[ENGINE].cfg.model_name)
    port = local_port(request)
    usage_field = {"usage": None} if job.include_usage else {}

    def chunks(seq: Sequence, start: int, stop: int) -> bytes:
        return b"".join(
            sse(
                {
                    **head,
                    "choices": [
                        {
                            "index": 0,
                            "text": seq.token(i),
                            "logprobs": None,
                            "finish_reason": finish_reason(job, seq) if i == stop - 1 else None,
                        }
                    ],
                    **usage_field,
                }
            )
            for i in range(start, stop)
        )

    def tail(seq: Sequence) -> bytes:
        if not job.include_usage:
            return b""
        return sse({**head, "choices": [], "usage": usage(seq), "sim_timing": timing(seq, port)})

    def answer(seq: Sequence) -> object:
        choice = {
            "index": 0,
            "text": seq.text(),
            "logprobs": None,
            "finish_reason": finish_reason(job, seq),
        }
        return {**head, "choices": [choice], "usage": usage(seq)}

    return await run_job(request, job, chunks, tail, answer)
