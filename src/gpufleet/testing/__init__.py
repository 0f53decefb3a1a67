"""Shipped helpers for testing gpufleet and code built on it: real processes on loopback.

``run_worker()`` and ``run_router()`` start a real ``gpufleet`` process bound to port 0 on
127.0.0.1, learn its port from ``--port-file``, wait for ``GET /health`` to answer 200, and
stop it (SIGTERM, then SIGKILL) on exit. ``run_engine()`` does the same for a simulated LLM
engine (``gpufleet.testing.llm_engine``: vLLM/SGLang routes, continuous batching, a prefix
KV cache, in wall time), configured by ``EngineConfig``'s flags.
"""

from gpufleet.testing._process import (
    ServerProcess,
    free_port,
    run_router,
    run_server,
    run_worker,
    wait_healthy,
)
from gpufleet.testing.llm.config import EngineConfig
from gpufleet.testing.llm.server import run_engine

__all__ = [
    "EngineConfig",
    "ServerProcess",
    "free_port",
    "run_engine",
    "run_router",
    "run_server",
    "run_worker",
    "wait_healthy",
]
