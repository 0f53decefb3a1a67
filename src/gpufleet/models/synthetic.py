"""``synthetic``: a stand-in for a GPU model that spends wall time, not CPU, and fails on cue.

A batch of n items sleeps ``(base_ms + per_item_ms * n) / speed`` ms on the device thread,
one batch at a time (the worker's single device thread serialises them, like a GPU). Its
knobs (see docs/architecture.md) make it fail, hang, crash, run out of memory or load
slowly, so that every layer above can be tested against faults.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from gpufleet.errors import ConfigError
from gpufleet.models.base import Model, ModelKind

_TRUE = {"1", "true", "yes", "on"}


def _num(name: str, value: str | float, *, minimum: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic: {name} must be a number, got {value!r}") from None
    if out < minimum:
        raise ConfigError(f"synthetic: {name} must be >= {minimum}, got {out}")
    return out


class Synthetic(Model):
    """Echoes its inputs after a GPU-like delay; every fault is a ``--model-arg``."""

    name: ClassVar[str] = "synthetic"
    kind: ClassVar[ModelKind] = "generic"
    max_batch_size: ClassVar[int | None] = 8

    def __init__(
        self,
        base_ms: str | float = 20,
        per_item_ms: str | float = 2,
        speed: str | float = 1.0,
        max_batch_size: str | int | None = None,
        load_s: str | float = 0,
        fail_rate: str | float = 0,
        fail_on: str = "",
        hang_on: str = "",
        hang_s: str | float = 3600,
        crash_after: str | int = 0,
        crash_on_start: str | bool = False,
        oom_above: str | int = 0,
        stream_chunks: str | int = 4,
        seed: str | int = 0,
    ) -> None:
        self.base_ms = _num("base_ms", base_ms)
        self.per_item_ms = _num("per_item_ms", per_item_ms)
        self.speed = _num("speed", speed, minimum=1e-6)
        if max_batch_size is not None:
            # An instance attribute: the worker reads the model's preferred size from it.
            self.max_batch_size = int(_num("max_batch_size", max_batch_size, minimum=1))  # type: ignore[misc]
        self.load_s = _num("load_s", load_s)
        self.fail_rate = _num("fail_rate", fail_rate)
        self.fail_on = str(fail_on)
        self.hang_on = str(hang_on)
        self.hang_s = _num("hang_s", hang_s)
        self.crash_after = int(_num("crash_after", crash_after))
        self.crash_on_start = str(crash_on_start).strip().lower() in _TRUE
        #: Batches larger than this raise a CUDA-style out-of-memory error (0: never).
        self.oom_above = int(_num("oom_above", oom_above))
        self.stream_chunks = int(_num("stream_chunks", stream_chunks, minimum=1))
        self._rng = random.Random(int(_num("seed", seed)))
        self._batches = 0
        self._lock = threading.Lock()
        self.device = "cpu"
        self.pid = os.getpid()
        # Diagnostic only: tests read which GPU mask the process was pinned to.
        self.cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")

    def setup(self, device: str) -> None:
        """Pretend to load weights: wait ``load_s`` seconds, or crash when told to."""
        if self.crash_on_start:
            os._exit(3)
        if self.load_s:
            time.sleep(self.load_s)
        self.device = device

    def _cost_s(self, n: int) -> float:
        return (self.base_ms + self.per_item_ms * n) / self.speed / 1000.0

    def predict(self, batch: list[Any]) -> list[Any]:
        """Sleep like a GPU batch would, then echo each input with where it ran."""
        with self._lock:
            self._batches += 1
            count = self._batches
        if self.crash_after and count > self.crash_after:
            os._exit(3)
        n = len(batch)
        if self.oom_above and n > self.oom_above:
            raise RuntimeError(f"CUDA out of memory (synthetic: batch of {n} > {self.oom_above})")
        if self.hang_on and any(x == self.hang_on for x in batch):
            time.sleep(self.hang_s)
        time.sleep(self._cost_s(n))
        if self.fail_on and any(x == self.fail_on for x in batch):
            raise RuntimeError(f"synthetic failure: input {self.fail_on!r} in batch")
        if self.fail_rate and self._rng.random() < self.fail_rate:
            raise RuntimeError(f"synthetic failure (fail_rate={self.fail_rate})")
        return [self._answer(x, n) for x in batch]

    def _answer(self, x: Any, n: int) -> dict[str, Any]:
        return {
            "echo": x,
            "pid": self.pid,
            "cuda_visible_devices": self.cuda_visible_devices,
            "device": self.device,
            "batch_size": n,
        }

    def predict_stream(self, item: Any) -> Iterator[Any]:
        """Yield ``stream_chunks`` pieces of the answer, one ``per_item_ms`` apart.

        An item equal to ``hang_on`` blocks ``hang_s`` after its first piece.
        """
        for i in range(self.stream_chunks):
            if i == 1 and self.hang_on and item == self.hang_on:
                time.sleep(self.hang_s)
            time.sleep(self.per_item_ms / self.speed / 1000.0)
            yield {"index": i, "echo": item, "pid": self.pid}
