"""Continuous batching without a clock: admit, step, give every running sequence a token.

The engine calls :meth:`Scheduler.begin_step` (admit waiting sequences, FIFO, and say how
long the step takes), sleeps that long, then calls :meth:`Scheduler.end_step` (one token
per sequence of the step; the first one right after its prefill). Tests drive the two by
hand with any ``now``.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gpufleet.testing.llm.cache import PrefixCache
from gpufleet.testing.llm.config import EngineConfig
from gpufleet.testing.llm.tokens import output_token

_ids = itertools.count(1)


class SeqState(enum.Enum):
    """Where a sequence is: waiting, running, finished or cancelled."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Sequence:
    """One request inside the engine: its prompt's blocks, its progress and its times."""

    prompt_tokens: int
    block_hashes: tuple[int, ...]
    max_tokens: int
    word_seed: int = 0
    submitted_at: float = 0.0
    id: int = field(default_factory=lambda: next(_ids))
    state: SeqState = SeqState.WAITING
    private_blocks: int = 0
    cached_tokens: int = 0
    #: Uncached prompt tokens of the whole step that admitted it (its prefill stall).
    step_prefill_tokens: int = 0
    generated: int = 0
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    #: Called after each step that changed this sequence (a token, the end): the engine's hook.
    wake: Callable[[], None] | None = None

    @property
    def is_done(self) -> bool:
        """Finished or cancelled: no more tokens will come."""
        return self.state in (SeqState.FINISHED, SeqState.CANCELLED)

    def token(self, index: int) -> str:
        """The ``index``-th generated token's text."""
        return output_token(self.word_seed, index)

    def text(self, start: int = 0, stop: int | None = None) -> str:
        """The generated tokens ``start..stop`` joined."""
        end = self.generated if stop is None else stop
        return "".join(self.token(i) for i in range(start, end))


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One engine step: its batch, what was admitted, and how long it takes."""

    batch: tuple[Sequence, ...]
    admitted: tuple[Sequence, ...]
    prefill_tokens: int
    seconds: float


class QueueFull(Exception):
    """The waiting queue is at its safety cap."""


class Scheduler:
    """Waiting queue, running batch and prefix cache of one simulated engine."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.cache = PrefixCache(cfg.kv_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Sequence, None] = {}  # insertion-ordered set
        self.steps = 0
        self.finished = 0
        self.cancelled = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0

    def step_seconds(self, running: int, prefill_tokens: int) -> float:
        """``(base + per_seq × running + prefill_per_token × prefill_tokens) / speed``, in s."""
        cfg = self.cfg
        ms = (
            cfg.step_base_ms
            + cfg.step_per_seq_ms * running
            + cfg.prefill_us_per_token / 1000.0 * prefill_tokens
        )
        return ms / 1000.0 / cfg.speed

    def blocks_needed(self, prompt_tokens: int, max_tokens: int) -> int:
        """KV blocks a sequence holds at its end (prompt plus completion)."""
        return math.ceil((prompt_tokens + max_tokens) / self.cfg.block_tokens)

    def add(self, seq: Sequence) -> None:
        """Queue ``seq`` (FIFO).

        Raises:
            QueueFull: ``max_waiting`` sequences already wait.
            ValueError: it could never fit in the KV cache.
        """
        if self.blocks_needed(seq.prompt_tokens, seq.max_tokens) > self.cfg.kv_blocks:
            raise ValueError(
                f"prompt ({seq.prompt_tokens} tokens) plus max_tokens ({seq.max_tokens}) "
                f"exceed the context of {self.cfg.max_context_tokens} tokens"
            )
        if len(self.waiting) >= self.cfg.max_waiting:
            raise QueueFull(f"{len(self.waiting)} requests waiting")
        seq.private_blocks = self.blocks_needed(seq.prompt_tokens, seq.max_tokens) - len(
            seq.block_hashes
        )
        seq.state = SeqState.WAITING
        self.waiting.append(seq)

    def cancel(self, seq: Sequence) -> None:
        """Drop ``seq`` wherever it is; a running one gives back its slot and blocks."""
        if seq.state is SeqState.WAITING:
            self.waiting.remove(seq)
        elif seq.state is SeqState.RUNNING:
            self._release(seq)
        else:
            return
        seq.state = SeqState.CANCELLED
        self.cancelled += 1

    def begin_step(self, now: float) -> StepPlan | None:
        """Admit what fits and plan the next step; None when nothing runs."""
        admitted: list[Sequence] = []
        prefill = 0
        cfg, cache = self.cfg, self.cache
        while self.waiting and len(self.running) < cfg.max_running:
            seq = self.waiting[0]
            # At least the last prompt token is always computed (vLLM does the same).
            limit = (seq.prompt_tokens - 1) // cfg.block_tokens
            hit = cache.match(seq.block_hashes, limit)
            uncached = seq.prompt_tokens - hit * cfg.block_tokens
            if admitted and prefill + uncached > cfg.max_prefill_tokens:
                break
            if not cache.fits(seq.block_hashes, hit, seq.private_blocks):
                break  # head of line waits for blocks, like a real engine
            self.waiting.popleft()
            cache.acquire(seq.block_hashes, seq.private_blocks)
            seq.state = SeqState.RUNNING
            seq.admitted_at = now
            seq.cached_tokens = hit * cfg.block_tokens
            self.running[seq] = None
            self.prefix_cache_queries += seq.prompt_tokens
            self.prefix_cache_hits += seq.cached_tokens
            self.prompt_tokens += seq.prompt_tokens
            prefill += uncached
            admitted.append(seq)
        for seq in admitted:
            seq.step_prefill_tokens = prefill
        if not self.running:
            return None
        batch = tuple(self.running)
        return StepPlan(batch, tuple(admitted), prefill, self.step_seconds(len(batch), prefill))

    def end_step(self, plan: StepPlan, now: float) -> list[Sequence]:
        """One token for each sequence of ``plan`` still running; return those sequences."""
        self.steps += 1
        out: list[Sequence] = []
        for seq in plan.batch:
            if seq.state is not SeqState.RUNNING:
                continue  # cancelled during the step
            seq.generated += 1
            self.generation_tokens += 1
            if seq.first_token_at is None:
                seq.first_token_at = now
            if seq.generated >= seq.max_tokens:
                self._release(seq)
                seq.state = SeqState.FINISHED
                seq.finished_at = now
                self.finished += 1
            out.append(seq)
        return out

    @property
    def kv_usage(self) -> float:
        """Fraction of the KV cache held by running sequences (0..1)."""
        return min(1.0, self.cache.used_blocks / self.cfg.kv_blocks)

    def _release(self, seq: Sequence) -> None:
        del self.running[seq]
        self.cache.release(seq.block_hashes, seq.private_blocks)
