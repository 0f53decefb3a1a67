"""SGLang's routes: ``/generate`` and what a gateway reads about a server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from gpufleet.testing.llm._answer import (
    ENGINE,
    VERSION,
    error,
    finish_reason,
    read_job,
    run_job,
    sse,
)
from gpufleet.testing.llm.bodies import generate_job
from gpufleet.testing.llm.engine import Engine, QueueFull
from gpufleet.testing.llm.scheduler import Sequence


async def generate(request: web.Request) -> web.StreamResponse:
    """SGLang's ``POST /generate``; a stream carries the text so far in every event."""
    job = await read_job(request, generate_job)
    if isinstance(job, web.Response):
        return job
    rid = uuid.uuid4().hex

    def meta(seq: Sequence, generated: int) -> dict[str, Any]:
        reason = finish_reason(job, seq) if generated == seq.generated else None
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
            sse({"text": seq.text(0, i + 1), "meta_info": meta(seq, i + 1)})
            for i in range(start, stop)
        )

    def answer(seq: Sequence) -> object:
        return {"text": seq.text(), "meta_info": meta(seq, seq.generated)}

    return await run_job(request, job, chunks, lambda seq: b"", answer)


async def health_generate(request: web.Request) -> web.Response:
    """SGLang's ``GET /health_generate``: one token goes through the engine (20 s budget)."""
    engine = request.app[ENGINE]
    try:
        seq = engine.submit("health", 1)
    except QueueFull:
        return error(503, "engine overloaded", "ServiceUnavailableError")
    try:
        async with asyncio.timeout(20.0):
            while not seq.is_done:
                await engine.wait(seq, seq.generated)
    except TimeoutError:
        return error(503, "no token within 20 s", "ServiceUnavailableError")
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
