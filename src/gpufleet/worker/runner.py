"""The device owner: loads the model and runs ``predict`` on one dedicated thread.

CUDA state is per thread in practice, so everything that touches the model (import,
``__init__``, ``setup``, ``predict``, ``encode``, ``predict_stream`` and its ``close``) runs
on the same single-thread executor, never on the event loop. ``encode`` runs right after
``predict`` in the same call, so outputs cross back to the loop already encoded and a heavy
``encode`` cannot stall ``/health``. Out-of-memory errors split the batch and lower the
effective batch size instead of failing the callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from gpufleet.errors import ConfigError, ModelError
from gpufleet.models import resolve_model_class
from gpufleet.models.base import Model

log = logging.getLogger("gpufleet.worker")
_DONE = object()
#: Device calls in a row in which no item succeeded, from which on failures are the
#: worker's own (see ``Runner._blame``).
FAILING_CALLS_OWN = 3
#: Words of a RuntimeError that mean the device failed, whatever the input.
_DEVICE_ERROR_MARKS = (
    "cuda error",
    "cuda driver",
    "cudnn",
    "cublas",
    "nccl",
    "device-side assert",
    "illegal memory access",
    "ecc error",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA OOM error, or a RuntimeError saying "out of memory"."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def is_device_error(exc: BaseException) -> bool:
    """True when ``exc`` says the device failed (out of memory, a CUDA error), not the input."""
    if is_out_of_memory(exc):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _DEVICE_ERROR_MARKS)


def resolve_device(requested: str) -> str:
    """Turn ``auto`` into ``cuda`` or ``cpu``; any other name is kept as given."""
    if requested != "auto":
        return requested
    torch = sys.modules.get("torch")
    if torch is not None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    # The model did not import torch: look for a device node rather than import it.
    return "cuda" if os.path.exists("/dev/nvidia0") else "cpu"


def _free_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True, slots=True)
class ItemFailed:
    """Stands for one item that failed alone (its ``predict`` or its ``encode`` raised):
    only that item's caller gets a 500, its batch-mates get their outputs."""

    message: str
    #: The device failed (out of memory alone, a CUDA error): never the input's fault.
    device_error: bool = False
    #: The input is to blame rather than the worker (set by ``Runner._blame``).
    request_fault: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the worker learns about the model once it has loaded."""

    name: str
    kind: str
    device: str
    max_batch_size: int | None
    streaming: bool
    custom_decode: bool
    binary_content_type: str


class Runner:
    """Owns the model and its one device thread."""

    def __init__(
        self,
        spec: str,
        model_args: dict[str, str],
        device: str,
        *,
        isolate_failures: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spec = spec
        self._clock = clock
        #: When a batch of several fails, try its halves apart so one bad item fails alone.
        self.isolate_failures = isolate_failures
        #: Batches that failed and were split to find the failing items.
        self.isolation_splits = 0
        self._model_args = dict(model_args)
        self._requested_device = device
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufleet-device")
        self.model: Model | None = None
        #: Called with the new effective max batch size after an OOM split.
        self.on_oom: Callable[[int], None] | None = None
        #: When the device thread's current call began (None while it is idle).
        self.busy_since: float | None = None
        #: When the device thread last finished a call (the stall detector's progress mark).
        self.last_finished_at: float | None = None
        #: Streams whose generator was closed before its end (caller gone, deadline).
        self.streams_closed = 0
        #: Device calls in a row in which no item succeeded (see ``_blame``).
        self.failing_calls = 0

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_thread, fn, *args)

    def _on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        # Set on the device thread itself, so a cancelled await cannot clear it early.
        # The loop reads busy_since before last_finished_at: written in the other order
        # here, it never sees a call over without the progress mark that ends it.
        self.busy_since = self._clock()
        try:
            return fn(*args)
        finally:
            self.last_finished_at = self._clock()
            self.busy_since = None

    @property
    def busy(self) -> bool:
        """True while a call runs on the device thread."""
        return self.busy_since is not None

    def _load(self) -> ModelInfo:
        cls = resolve_model_class(self._spec)
        try:
            model = cls(**self._model_args)
        except TypeError as exc:
            raise ConfigError(f"model {self._spec}: bad --model-arg: {exc}") from exc
        device = resolve_device(self._requested_device)
        model.setup(device)
        self.model = model
        mbs = getattr(model, "max_batch_size", None)
        return ModelInfo(
            name=str(getattr(model, "name", None) or self._spec),
            kind=str(getattr(model, "kind", "generic")),
            device=device,
            max_batch_size=int(mbs) if mbs else None,
            streaming=bool(getattr(type(model), "supports_streaming", lambda: False)()),
            custom_decode=isinstance(model, Model) and type(model).overrides_decode(),
            binary_content_type=str(
                getattr(model, "binary_content_type", "application/octet-stream")
            ),
        )

    async def load(self) -> ModelInfo:
        """Import, create and ``setup`` the model on the device thread."""
        info: ModelInfo = await self._call(self._load)
        return info

    def _loaded(self) -> Model:
        if self.model is None:
            raise ModelError("the model is not loaded")
        return self.model

    def _predict_split(self, batch: list[Any]) -> list[Any]:
        try:
            outputs = self._loaded().predict(batch)
        except Exception as exc:
            if not is_out_of_memory(exc) or len(batch) < 2:
                raise
            half = len(batch) // 2
            log.warning(
                "out of memory on a batch of %d; retrying as %d + %d",
                len(batch),
                half,
                len(batch) - half,
            )
            _free_cuda_cache()
            if self.on_oom is not None:
                self.on_oom(half)
            return self._predict_split(batch[:half]) + self._predict_split(batch[half:])
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(batch):
            got = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
            raise ModelError(f"predict() returned {got} outputs for a batch of {len(batch)}")
        return list(outputs)

    def _encode(self, output: Any) -> Any:
        encode = getattr(self.model, "encode", None)
        return output if encode is None else encode(output)

    def _predict_isolating(self, batch: list[Any]) -> list[Any]:
        """``predict``; a failing batch of several is halved until the failing items stand
        alone (``ItemFailed``), so one bad input does not fail its batch-mates."""
        try:
            return self._predict_split(batch)
        except Exception as exc:
            if not self.isolate_failures or len(batch) < 2:
                raise
            self.isolation_splits += 1
            half = len(batch) // 2
            log.warning(
                "predict failed on a batch of %d (%s: %s); trying %d + %d apart",
                len(batch),
                type(exc).__name__,
                exc,
                half,
                len(batch) - half,
            )
            return self._isolated(batch[:half]) + self._isolated(batch[half:])

    def _isolated(self, batch: list[Any]) -> list[Any]:
        try:
            return self._predict_isolating(batch)
        except Exception as exc:  # a lone item (or isolation off): it fails by itself
            failed = ItemFailed(_message(exc), device_error=is_device_error(exc))
            return [failed for _ in batch]

    def _blame(self, *, any_ok: bool, device_error: bool) -> bool:
        """Whether a failure in a call that just ended is the input's fault, not the worker's.

        A device error is the worker's. An item that failed while another of its call
        succeeded is the input's (a poisoned item, isolated). When no item of a call
        succeeded, the input is blamed until ``FAILING_CALLS_OWN`` such calls come in a row
        with no success between: a device that fails everything is soon called broken,
        while one bad request sent alone (the usual case at low load) is not.
        """
        if device_error:
            return False
        return any_ok or self.failing_calls < FAILING_CALLS_OWN

    def _predict_encoded(self, batch: list[Any]) -> list[Any]:
        try:
            outputs = self._predict_isolating(batch)
        except Exception as exc:  # the whole call failed (a batch of one, or no isolation)
            self.failing_calls += 1
            fault = self._blame(any_ok=False, device_error=is_device_error(exc))
            raise ModelError(_message(exc), request_fault=fault) from exc
        encoded: list[Any] = []
        for out in outputs:
            if isinstance(out, ItemFailed):
                encoded.append(out)
                continue
            try:
                encoded.append(self._encode(out))
            except Exception as exc:
                log.error("encode failed: %s: %s", type(exc).__name__, exc)
                encoded.append(ItemFailed(f"encode raised {type(exc).__name__}: {exc}"))
        any_ok = any(not isinstance(out, ItemFailed) for out in encoded)
        if any_ok:
            self.failing_calls = 0
        elif encoded:
            self.failing_calls += 1
        return [
            replace(out, request_fault=self._blame(any_ok=any_ok, device_error=out.device_error))
            if isinstance(out, ItemFailed)
            else out
            for out in encoded
        ]

    async def predict(self, batch: list[Any]) -> list[Any]:
        """Run ``predict`` then ``encode`` on each output, on the device thread.

        An item that failed alone (its ``predict`` or ``encode`` raised) comes back as
        ``ItemFailed``, saying whether the input is to blame.

        Raises:
            ModelError: predict raised (the message says what, ``request_fault`` whose
                fault it looks like), or answered the wrong count.
        """
        try:
            result: list[Any] = await self._call(self._predict_encoded, batch)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{type(exc).__name__}: {exc}") from exc
        return result

    def _next_encoded(self, it: Iterator[Any]) -> Any:
        piece = next(it, _DONE)
        return piece if piece is _DONE else self._encode(piece)

    def _close_stream(self, it: Iterator[Any]) -> None:
        close = getattr(it, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            log.exception("closing the model's stream raised")
        self.streams_closed += 1

    async def stream(self, item: Any) -> AsyncGenerator[Any, None]:
        """Yield the encoded pieces of ``predict_stream(item)``, each step on the device thread.

        Stepping piece by piece lets batches run between the pieces of a long stream. When
        the consumer stops early (caller gone, deadline), the model's generator is closed
        on the device thread, after any step still running there, so its ``finally`` runs.

        Raises:
            ModelError: the model raised while streaming.
        """
        model = self._loaded()
        it: Iterator[Any] | None = None
        finished = False
        try:
            it = await self._call(lambda: iter(model.predict_stream(item)))
            while True:
                piece = await self._call(self._next_encoded, it)
                if piece is _DONE:
                    finished = True
                    return
                yield piece
        except ModelError:
            raise
        except Exception as exc:
            finished = True  # the generator raised: it is closed already
            fault = self._blame(any_ok=False, device_error=is_device_error(exc))
            raise ModelError(f"{type(exc).__name__}: {exc}", request_fault=fault) from exc
        finally:
            if it is not None and not finished:
                # Not awaited: this may run under cancellation. The one device thread
                # orders it after a next() still in progress (a running generator
                # cannot be closed from another thread).
                with contextlib.suppress(RuntimeError):  # executor already shut down
                    self._executor.submit(self._on_thread, self._close_stream, it)

    def shutdown(self, *, wait: bool) -> None:
        """Stop the device thread (``wait=False`` when a predict may hang forever)."""
        self._executor.shutdown(wait=wait, cancel_futures=True)

    @property
    def thread_alive(self) -> bool:
        """True while the device thread exists (a hung predict keeps it alive)."""
        return any(t.is_alive() for t in getattr(self._executor, "_threads", ()))


def _message(exc: BaseException) -> str:
    """What a caller is told about an exception raised by model code."""
    return exc.message if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
