"""The simulated engine's HTTP face: OpenAI and SGLang routes, vLLM metrics, its own stats."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from gpufleet.testing.llm.bodies import (
    BadRequest,
    Job,
    chat_job,
    completion_job,
    generate_job,
)
from gpufleet.testing.llm.config import EngineConfig
from gpufleet.testing.llm.engine import Engine, QueueFull
from gpufleet.testing.llm.metrics import render_metrics
from gpufleet.testing.llm.scheduler import Sequence

ENGINE = web.AppKey("engine", Engine)
VERSION = "0.0.0-sim"
_DONE = b"data: [DONE]\n\n"

#: Renders SSE bytes for tokens ``start..stop`` of a sequence.
_Chunks = Callable[[Sequence, int, int], bytes]


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response(body, status=status, headers=headers)


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _finish_reason(job: Job, seq: Sequence) -> str | None:
    if not seq.is_done or seq.generated < seq.max_tokens:
        return None
    return "length" if job.explicit_max else "stop"


def _usage(seq: Sequence) -> dict[str, Any]:
    return {
        "prompt_tokens": seq.prompt_tokens,
        "completion_tokens": seq.generated,
        "total_tokens": seq.prompt_tokens + seq.generated,
        "prompt_tokens_details": {"cached_tokens": seq.cached_tokens},
    }


async def _read_job(
    request: web.Request, parse: Callable[[object, int], Job]
) -> Job | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not valid JSON", "BadRequestError")
    try:
        return parse(body, request.app[ENGINE].cfg.max_tokens_default)
    except BadRequest as exc:
        return _error(400, str(exc), "BadRequestError")


def _submit(engine: Engine, job: Job) -> Sequence | web.Response:
    try:
        return engine.submit(job.prompt, job.max_tokens)
    except QueueFull as exc:
        return _error(503, f"engine overloaded: {exc}", "ServiceUnavailableError")
    except ValueError as exc:
        return _error(400, str(exc), "BadRequestError")


async def _run(
    request: web.Request,
    job: Job,
    chunks: _Chunks,
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


def _head(kind: str, prefix: str, model: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    job = await _read_job(request, chat_job)
    if isinstance(job, web.Response):
        return job
    model = request.app[ENGINE].cfg.model_name
    head = _head("chat.completion.chunk", "chatcmpl", model)
    usage_field = {"usage": None} if job.include_usage else {}

    def chunks(seq: Sequence, start: int, stop: int) -> bytes:
        out = []
        for i in range(start, stop):
            delta = {"role": "assistant", "content": ""} if i == 0 else None
            if delta is not None:
                choice0 = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                out.append(_sse({**head, "choices": [choice0], **usage_field}))
            last = i == stop - 1
            choice = {
                "index": 0,
                "delta": {"content": seq.token(i)},
                "logprobs": None,
                "finish_reason": _finish_reason(job, seq) if last else None,
            }
            out.append(_sse({**head, "choices": [choice], **usage_field}))
        return b"".join(out)

    def tail(seq: Sequence) -> bytes:
        return _sse({**head, "choices": [], "usage": _usage(seq)}) if job.include_usage else b""

    def answer(seq: Sequence) -> object:
        message = {"role": "assistant", "content": seq.text()}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": _finish_reason(job, seq),
        }
        return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage(seq)}

    return await _run(request, job, chunks, tail, answer)


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions``."""
    job = await _read_job(request, completion_job)
    if isinstance(job, web.Response):
        return job
    head = _head("text_completion", "cmpl", request.app[ENGINE].cfg.model_name)
    usage_field = {"usage": None} if job.include_usage else {}

    def chunks(seq: Sequence, start: int, stop: int) -> bytes:
        return b"".join(
            _sse(
                {
                    **head,
                    "choices": [
                        {
                            "index": 0,
                            "text": seq.token(i),
                            "logprobs": None,
                            "finish_reason": _finish_reason(job, seq) if i == stop - 1 else None,
                        }
                    ],
                    **usage_field,
                }
            )
            for i in range(start, stop)
        )

    def tail(seq: Sequence) -> bytes:
        return _sse({**head, "choices": [], "usage": _usage(seq)}) if job.include_usage else b""

    def answer(seq: Sequence) -> object:
        choice = {
            "index": 0,
            "text": seq.text(),
            "logprobs": None,
            "finish_reason": _finish_reason(job, seq),
        }
        return {**head, "choices": [choice], "usage": _usage(seq)}

    return await _run(request, job, chunks, tail, answer)


async def generate(request: web.Request) -> web.StreamResponse:
    """SGLang's ``POST /generate``; a stream carries the text so far in every event."""
    job = await _read_job(request, generate_job)
    if isinstance(job, web.Response):
        return job
    rid = uuid.uuid4().hex

    def meta(seq: Sequence, generated: int) -> dict[str, Any]:
        reason = _finish_reason(job, seq) if generated == seq.generated else None
        finish = None if reason is None else {"type": reason, "length": generated}
        if reason == "stop":
            finish = {"type": "stop", "matched": None}
        return {
            "id": rid,
            "finish_reason": finish,
            "prompt_tokens": seq.prompt_tokens,
            "completion_tokens": generated,
            "cached_tokens": seq.cached_tokens,
        }

    def chunks(seq: Sequence, start: int, stop: int) -> bytes:
        return b"".join(
            _sse({"text": seq.text(0, i + 1), "meta_info": meta(seq, i + 1)})
            for i in range(start, stop)
        )

    def answer(seq: Sequence) -> object:
        return {"text": seq.text(), "meta_info": meta(seq, seq.generated)}

    return await _run(request, job, chunks, lambda seq: b"", answer)


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the one served model."""
    cfg = request.app[ENGINE].cfg
    card = {
        "id": cfg.model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": cfg.model_name,
        "parent": None,
        "max_model_len": cfg.max_context_tokens,
    }
    return web.json_response({"object": "list", "data": [card]})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: the engine loop runs."""
    return web.json_response({})


async def health_generate(request: web.Request) -> web.Response:
    """SGLang's ``GET /health_generate``: one token goes through the engine (20 s budget)."""
    engine = request.app[ENGINE]
    try:
        seq = engine.submit("health", 1)
    except QueueFull:
        return _error(503, "engine overloaded", "ServiceUnavailableError")
    try:
        async with asyncio.timeout(20.0):
            while not seq.is_done:
                await engine.wait(seq, seq.generated)
    except TimeoutError:
        return _error(503, "no token within 20 s", "ServiceUnavailableError")
    finally:
        engine.abort(seq)
    return web.json_response({})


def _server_info(engine: Engine) -> dict[str, Any]:
    cfg, sched = engine.cfg, engine.scheduler
    return {
        "model_path": cfg.model_name,
        "served_model_name": cfg.model_name,
        "tokenizer_path": cfg.model_name,
        "max_running_requests": cfg.max_running,
        "max_total_num_tokens": cfg.max_context_tokens,
        "context_length": cfg.max_context_tokens,
        "page_size": cfg.block_tokens,
        "chunked_prefill_size": cfg.max_prefill_tokens,
        "max_prefill_tokens": cfg.max_prefill_tokens,
        "schedule_policy": "fcfs",
        "disable_radix_cache": False,
        "status": "ready",
        "version": VERSION,
        "internal_states": [
            {
                "num_running_reqs": len(sched.running),
                "num_waiting_reqs": len(sched.waiting),
                "token_usage": sched.kv_usage,
            }
        ],
    }


async def server_info(request: web.Request) -> web.Response:
    """SGLang's ``GET /get_server_info`` (and ``/server_info``)."""
    return web.json_response(_server_info(request.app[ENGINE]))


async def model_info(request: web.Request) -> web.Response:
    """SGLang's ``GET /get_model_info``."""
    name = request.app[ENGINE].cfg.model_name
    return web.json_response({"model_path": name, "tokenizer_path": name, "is_generation": True})


async def get_load(request: web.Request) -> web.Response:
    """SGLang's ``GET /get_load``: one entry (data-parallel rank 0)."""
    sched = request.app[ENGINE].scheduler
    tokens = sum(s.prompt_tokens + s.generated for s in sched.running)
    load = {
        "dp_rank": 0,
        "num_reqs": len(sched.running) + len(sched.waiting),
        "num_waiting_reqs": len(sched.waiting),
        "num_tokens": tokens,
    }
    return web.json_response([load])


async def flush_cache(request: web.Request) -> web.Response:
    """SGLang's ``POST /flush_cache`` and vLLM's ``POST /reset_prefix_cache``."""
    dropped = request.app[ENGINE].flush_cache()
    return web.Response(text=f"Cache flushed ({dropped} blocks).\n")


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text under vLLM's names."""
    text = render_metrics(request.app[ENGINE])
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def stats_of(engine: Engine) -> dict[str, Any]:
    """``GET /stats``: what this engine did, and its knobs."""
    sched = engine.scheduler
    queries = sched.prefix_cache_queries
    return {
        "model": engine.cfg.model_name,
        "pid": os.getpid(),
        "running": len(sched.running),
        "waiting": len(sched.waiting),
        "served": sched.finished,
        "cancelled": sched.cancelled,
        "rejected": engine.rejected,
        "steps": sched.steps,
        "prompt_tokens": sched.prompt_tokens,
        "completion_tokens": sched.generation_tokens,
        "prefix_cache_queries": queries,
        "prefix_cache_hits": sched.prefix_cache_hits,
        "cache_hit_rate": sched.prefix_cache_hits / queries if queries else 0.0,
        "kv_cache_usage": sched.kv_usage,
        "cached_blocks": len(sched.cache),
        "evicted_blocks": sched.cache.evictions,
        "knobs": asdict(engine.cfg),
    }


async def stats(request: web.Request) -> web.Response:
    """``GET /stats``."""
    return web.json_response(stats_of(request.app[ENGINE]))


async def _as_engine(request: web.Request, response: web.StreamResponse) -> None:
    # vLLM and SGLang answer from uvicorn; a router must not see aiohttp or gpufleet here.
    response.headers["Server"] = "uvicorn"


def make_app(cfg: EngineConfig | None = None) -> web.Application:
    """The engine's application; its loop runs while the app does.

    Serve it with ``handler_cancellation=True`` (``web.AppRunner``/``web.run_app``) so that
    a caller who leaves cancels its sequence.
    """
    engine = Engine(cfg or EngineConfig())

    async def run_loop(app: web.Application) -> AsyncIterator[None]:
        async with app[ENGINE].running():
            yield

    app = web.Application(client_max_size=64 << 20)
    app[ENGINE] = engine
    app.cleanup_ctx.append(run_loop)
    app.on_response_prepare.append(_as_engine)
    add = app.router
    add.add_post("/v1/chat/completions", chat_completions)
    add.add_post("/v1/completions", completions)
    add.add_get("/v1/models", models)
    add.add_get("/health", health)
    add.add_get("/stats", stats)
    add.add_get("/version", _version)
    if engine.cfg.api in ("both", "vllm"):
        add.add_get("/metrics", metrics)
        add.add_post("/reset_prefix_cache", flush_cache)
    if engine.cfg.api in ("both", "sglang"):
        add.add_post("/generate", generate)
        add.add_get("/health_generate", health_generate)
        add.add_get("/get_server_info", server_info)
        add.add_get("/server_info", server_info)
        add.add_get("/get_model_info", model_info)
        add.add_get("/get_load", get_load)
        add.add_post("/flush_cache", flush_cache)
    return app


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})
