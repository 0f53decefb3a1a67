"""What every generating route shares: read the body, run the sequence, answer or stream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gpufleet.testing.llm.bodies import BadRequest, Job
from gpufleet.testing.llm.engine import Engine, QueueFull
from gpufleet.testing.llm.scheduler import Sequence

ENGINE = web.AppKey("engine", Engine)
VERSION = "0.0.0-sim"
_DONE = b"data: [DONE]\n\n"

#: Renders SSE bytes for tokens ``start..stop`` of a sequence.
Chunks = Callable[[Sequence, int, int], bytes]


def error(status: int, message: str, kind: str) -> web.Response:
    """An OpenAI-style error answer (a 503 also says Retry-After)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response(body, status=status, headers=headers)


def sse(obj: object) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def finish_reason(job: Job, seq: Sequence) -> str | None:
    """None until ``seq`` ends; then "length" when the caller set the limit, else "stop"."""
    if not seq.is_done or seq.generated < seq.max_tokens:
        return None
    return "length" if job.explicit_max else "stop"


def timing(seq: Sequence, port: int) -> dict[str, Any]:
    """Where ``seq``'s time to first token went inside the engine (not an OpenAI field).

    ``engine`` is the port it listens on; ``queued_ms`` from arrival to admission,
    ``ttft_ms`` from arrival to its first token, ``step_prefill_tokens`` the uncached
    prompt tokens of the step that admitted it (what that step's prefill cost everyone
    in it). A benchmark subtracts these from its own TTFT to find the router's share.
    """
    admitted = seq.admitted_at if seq.admitted_at is not None else seq.submitted_at
    first = seq.first_token_at if seq.first_token_at is not None else admitted
    return {
        "engine": port,
        "queued_ms": round((admitted - seq.submitted_at) * 1000.0, 3),
        "ttft_ms": round((first - seq.submitted_at) * 1000.0, 3),
        "cached_tokens": seq.cached_tokens,
        "prompt_tokens": seq.prompt_tokens,
        "step_prefill_tokens": seq.step_prefill_tokens,
    }


def local_port(request: web.Request) -> int:
    """The port this request came in on (the engine's identity in ``timing``)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sockname[1]) if sockname else 0


def usage(seq: Sequence) -> dict[str, Any]:
    """OpenAI's ``usage`` of ``seq``, with its cached prompt tokens."""
    return {
        "prompt_tokens": seq.prompt_tokens,
        "completion_tokens": seq.generated,
        "total_tokens": seq.prompt_tokens + seq.generated,
        "prompt_tokens_details": {"cached_tokens": seq.cached_tokens},
    }


async def read_job(request: web.Request, parse: Callable[[object, int], Job]) -> Job | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return error(400, "the body is not valid JSON", "BadRequestError")
    try:
        return parse(body, request.app[ENGINE].cfg.max_tokens_default)
    except BadRequest as exc:
        return error(400, str(exc), "BadRequestError")


def _submit(engine: Engine, job: Job) -> Sequence | web.Response:
    try:
        return engine.submit(job.prompt, job.max_tokens)
    except QueueFull as exc:
        return error(503, f"engine overloaded: {exc}", "ServiceUnavailableError")
    except ValueError as exc:
        return error(400, str(exc), "BadRequestError")


async def run_job(
    request: web.Request,
    job: Job,
    chunks: Chunks,
    tail: Callable[[Sequence], bytes],
    answer: Callable[[Sequence], object],
) -> web.StreamResponse:
    """Serve ``job``: one JSON answer, or SSE chunks as tokens come; abort if the caller goes."""
    engine = request.app[ENGINE]
    seq = _submit(engine, job)
    if isinstance(seq, web.Response):
        return seq
    try:
        if not job.stream:
            while not seq.is_done:
                await engine.wait(seq, seq.generated)
            return web.json_response(answer(seq))
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        sent = 0
        try:
            while True:
                await engine.wait(seq, sent)
                done, stop = seq.is_done, seq.generated
                if stop > sent:
                    await response.write(chunks(seq, sent, stop))
                    sent = stop
                if done:
                    break
            await response.write(tail(seq) + _DONE)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the caller left; the finally frees its slot
        return response
    finally:
        engine.abort(seq)


def answer_head(kind: str, prefix: str, model: str) -> dict[str, Any]:
    """``id``, ``object``, ``created`` and ``model`` of an OpenAI answer or chunk."""
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }
