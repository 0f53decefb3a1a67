"""The simulated engine's HTTP application: its routes, and vLLM's metrics and its own stats."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from aiohttp import web

from gpufleet.testing.llm import openai_routes, sglang_routes
from gpufleet.testing.llm._answer import ENGINE, VERSION
from gpufleet.testing.llm.config import EngineConfig
from gpufleet.testing.llm.engine import Engine
from gpufleet.testing.llm.metrics import render_metrics


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
    """``GET /health``: 200 ``{}`` while the engine loop runs, 503 once it failed."""
    failure = request.app[ENGINE].failure
    if failure is not None:
        return web.json_response({"error": "EngineDead", "message": failure}, status=503)
    return web.json_response({})


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
    add.add_post("/v1/chat/completions", openai_routes.chat_completions)
    add.add_post("/v1/completions", openai_routes.completions)
    add.add_get("/v1/models", models)
    add.add_get("/health", health)
    add.add_get("/stats", stats)
    add.add_get("/version", _version)
    if engine.cfg.api in ("both", "vllm"):
        add.add_get("/metrics", metrics)
        add.add_post("/reset_prefix_cache", sglang_routes.flush_cache)
    if engine.cfg.api in ("both", "sglang"):
        add.add_post("/generate", sglang_routes.generate)
        add.add_get("/health_generate", sglang_routes.health_generate)
        add.add_get("/get_server_info", sglang_routes.server_info)
        add.add_get("/server_info", sglang_routes.server_info)
        add.add_get("/get_model_info", sglang_routes.model_info)
        add.add_get("/get_load", sglang_routes.get_load)
        add.add_post("/flush_cache", sglang_routes.flush_cache)
    return app


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})
