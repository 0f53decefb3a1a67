"""The engine loop: one asyncio task that runs the scheduler's steps in wall time.

A step sleeps (``asyncio.sleep``, never CPU) for the time the scheduler gives it, so many
simulated engines can share a small machine. Handlers submit a prompt, wait for tokens,
and abort their sequence when their caller leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from gpufleet.testing.llm.config import EngineConfig
from gpufleet.testing.llm.metrics import Histogram
from gpufleet.testing.llm.scheduler import QueueFull, Scheduler, Sequence
from gpufleet.testing.llm.tokens import block_hashes, prompt_seed, tokenize

__all__ = ["Engine", "QueueFull"]

log = logging.getLogger(__name__)

#: vLLM's buckets for time to first token and end-to-end latency (seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


class Engine:
    """A simulated LLM engine: continuous batching over a prefix KV cache, in wall time."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.scheduler = Scheduler(cfg)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.rejected = 0
        #: Why the engine loop stopped, if it did (then /health answers 503).
        self.failure: str | None = None
        self._wake = asyncio.Event()
        self._events: dict[Sequence, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """Run the engine loop for the duration of the block."""
        task = asyncio.create_task(self._loop(), name="llm-engine")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def submit(self, prompt: str, max_tokens: int) -> Sequence:
        """Queue a prompt for ``max_tokens`` tokens.

        Raises:
            QueueFull: the waiting queue is at its cap.
            ValueError: the prompt and completion exceed the context.
        """
        tokens = tokenize(prompt)
        seq = Sequence(
            prompt_tokens=max(1, len(tokens)),
            block_hashes=tuple(block_hashes(tokens, self.cfg.block_tokens)),
            max_tokens=max_tokens,
            word_seed=prompt_seed(prompt, self.cfg.seed),
            submitted_at=asyncio.get_running_loop().time(),
        )
        try:
            self.scheduler.add(seq)
        except QueueFull:
            self.rejected += 1
            raise
        event = asyncio.Event()
        self._events[seq] = event
        seq.wake = event.set
        self._wake.set()
        return seq

    async def wait(self, seq: Sequence, seen: int) -> None:
        """Return once ``seq`` has more than ``seen`` tokens or is done."""
        event = self._events.get(seq)
        while event is not None and seq.generated <= seen and not seq.is_done:
            await event.wait()
            event.clear()

    def abort(self, seq: Sequence) -> None:
        """Forget ``seq``: cancel it if it still waits or runs (its caller left)."""
        if not seq.is_done:
            self.scheduler.cancel(seq)
            self._wake.set()
        self._events.pop(seq, None)

    def flush_cache(self) -> int:
        """Drop every cached block no running sequence holds; return how many."""
        return self.scheduler.cache.clear()

    async def _loop(self) -> None:
        try:
            await self._steps()
        except Exception as exc:
            # A bug here must not look like a healthy engine that never answers.
            log.exception("engine loop failed")
            self.failure = repr(exc)

    async def _steps(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.scheduler
        while True:
            plan = sched.begin_step(loop.time())
            if plan is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(plan.seconds)
            now = loop.time()
            for seq in sched.end_step(plan, now):
                if seq.generated == 1:
                    self.ttft.observe(now - seq.submitted_at)
                if seq.is_done:
                    self.e2e.observe(now - seq.submitted_at)
                if seq.wake is not None:
                    seq.wake()
