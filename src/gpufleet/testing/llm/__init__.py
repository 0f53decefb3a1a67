"""A simulated LLM inference engine (vLLM/SGLang-like) in wall time, for tests and benchmarks.

- ``config``: :class:`EngineConfig`, the knobs (and the CLI flags made from them);
- ``tokens``: the tokenizer, the chat template, chained block hashes, generated words;
- ``cache``: :class:`PrefixCache`, KV blocks pinned by running sequences, LRU-evicted;
- ``scheduler``: :class:`Scheduler`, continuous batching stepped by hand;
- ``engine``: :class:`Engine`, the one loop task that sleeps each step's time;
- ``bodies``, ``app``, ``metrics``: the HTTP routes, request bodies and vLLM metrics.

Run it with ``python -m gpufleet.testing.llm_engine`` or ``run_engine()``.
"""

from gpufleet.testing.llm.app import make_app
from gpufleet.testing.llm.cache import PrefixCache
from gpufleet.testing.llm.config import EngineConfig
from gpufleet.testing.llm.engine import Engine
from gpufleet.testing.llm.scheduler import QueueFull, Scheduler, SeqState, Sequence, StepPlan
from gpufleet.testing.llm.tokens import block_hashes, render_chat, tokenize

__all__ = [
    "Engine",
    "EngineConfig",
    "PrefixCache",
    "QueueFull",
    "Scheduler",
    "SeqState",
    "Sequence",
    "StepPlan",
    "block_hashes",
    "make_app",
    "render_chat",
    "tokenize",
]
