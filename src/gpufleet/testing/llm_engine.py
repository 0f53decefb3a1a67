"""A simulated LLM engine server: ``python -m gpufleet.testing.llm_engine --port 0 --port-file F``.

It answers where routers look at vLLM and SGLang (OpenAI chat and completions with
streaming, SGLang's ``/generate`` and info routes, vLLM's ``/metrics``), and spends wall
time, not CPU: continuous batching over a prefix KV cache (see ``gpufleet.testing.llm`` and
docs/architecture.md). ``run_engine()`` starts one as a real process and yields it once
``/health`` answers 200; ``make_app()`` serves it in-process. The flags are
:class:`EngineConfig`'s fields (``--help`` lists them).
"""

from __future__ import annotations

from gpufleet.testing.llm.app import make_app
from gpufleet.testing.llm.config import EngineConfig
from gpufleet.testing.llm.server import main, run_engine

__all__ = ["EngineConfig", "main", "make_app", "run_engine"]

if __name__ == "__main__":
    main()
