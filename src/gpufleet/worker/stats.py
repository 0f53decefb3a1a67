"""Counters behind a worker's ``GET /stats`` (``gpufleet.wire.WorkerStats``).

On a GPU, ``GpuSampler`` adds the device's utilisation and memory (NVML), read on a
thread every few seconds so that neither /stats nor the loop ever waits on the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from gpufleet._percentile import percentile_ms
from gpufleet.wire import GpuReading, LatencyMs, RecentError

log = logging.getLogger("gpufleet.worker")

#: Failed requests /stats lists under ``recent_errors`` (``gpufleet monitor --errors``).
RECENT_ERRORS = 20


@dataclass
class WorkerCounters:
    """What the worker counts while it serves; read by /stats and the benchmark."""

    #: Requests answered with a 2xx status.
    served: int = 0
    #: Requests answered with an error other than "queue full" (4xx, 5xx, deadlines).
    errors: int = 0
    #: Requests turned away because the queue was full (503 WorkerOverloaded).
    rejected: int = 0
    #: Items removed before predict because their caller left or their deadline passed.
    dropped: int = 0
    #: Items that ran in a predict call that raised, or whose encode raised.
    failed_items: int = 0
    batches: int = 0
    batched_items: int = 0
    oom_splits: int = 0
    #: Times the worker turned stalled (its device thread finished nothing for too long).
    stalls: int = 0
    in_flight: int = 0
    #: Streams open now (each holds one slot of ``max_queue``).
    streams: int = 0
    #: Latency (seconds) of the last ``window`` served requests.
    window: int = 2048
    _latencies: deque[float] = field(default_factory=deque)
    _errors: deque[RecentError] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))

    def record_error(self, error: str, message: str, *, status: int, path: str, at: float) -> None:
        """Remember one failed request (``at``: Unix time) for /stats ``recent_errors``."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        self._errors.append(RecentError(stamp, error, message[:300], status, path))

    def recent_errors(self) -> list[RecentError]:
        """The last ``RECENT_ERRORS`` failed requests, oldest first."""
        return list(self._errors)

    def record_latency(self, seconds: float) -> None:
        """Remember the latency of one served request."""
        self._latencies.append(seconds)
        while len(self._latencies) > self.window:
            self._latencies.popleft()

    def record_batch(self, size: int) -> None:
        """Count one predict call of ``size`` items."""
        self.batches += 1
        self.batched_items += size

    @property
    def avg_batch_size(self) -> float:
        """Mean items per predict call since start."""
        return self.batched_items / self.batches if self.batches else 0.0

    def latency_ms(self) -> LatencyMs:
        """p50 and p99 over the recent window, in milliseconds."""
        values = sorted(self._latencies)
        return LatencyMs(p50=percentile_ms(values, 0.50), p99=percentile_ms(values, 0.99))


# GPU utilisation and memory (NVML) ------------------------------------------------------

#: Seconds between two NVML readings.
GPU_SAMPLE_S = 2.0
#: A reading that takes longer than this is given up on (a wedged driver must not stall).
GPU_READ_TIMEOUT_S = 5.0


def nvml_target(device: str, visible: str | None) -> int | str | None:
    """The NVML device (index or UUID) behind torch-style ``device`` in this process.

    NVML ignores ``CUDA_VISIBLE_DEVICES``, so ``cuda:N`` is the N-th entry of that mask
    (an index, read in PCI bus order as the fleet sets it, or a ``GPU-…`` UUID). None
    when the device is not a GPU or the mask hides it.
    """
    if device != "cuda" and not device.startswith("cuda:"):
        return None
    _, _, ordinal_text = device.partition(":")
    try:
        ordinal = int(ordinal_text or 0)
    except ValueError:
        return None
    if visible is None:
        return ordinal
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if ordinal >= len(entries):
        return None
    entry = entries[ordinal]
    if entry.isdigit():
        return int(entry)
    return entry if entry.startswith(("GPU-", "MIG-")) else None


class GpuReader(Protocol):
    """One reading of a GPU (blocking: call it off the loop)."""

    def read(self) -> GpuReading: ...

    def close(self) -> None: ...


class NvmlReader:
    """Reads one GPU through NVML (``nvidia-ml-py``); ``nvml`` is the module (a seam)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle

    @classmethod
    def open(cls, target: int | str, nvml: Any | None = None) -> NvmlReader | None:
        """A reader of ``target``, or None without NVML or that device (blocking)."""
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                return None
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except Exception:  # pynvml raises its own NVMLError_* classes; no driver is normal
            return None
        try:
            if isinstance(target, int):
                handle = nvml.nvmlDeviceGetHandleByIndex(target)
            else:
                handle = nvml.nvmlDeviceGetHandleByUUID(target)
        except Exception as exc:
            log.warning("NVML has no device %r: %s", target, exc)
            nvml.nvmlShutdown()
            return None
        return cls(nvml, handle)

    def read(self) -> GpuReading:
        """Utilisation (%), memory (MiB) and identity; a field NVML refuses is left out."""
        nvml, h = self._nvml, self._handle
        out: dict[str, object] = {}
        readings: dict[str, Callable[[], Any]] = {  # pynvml is untyped
            "index": lambda: int(nvml.nvmlDeviceGetIndex(h)),
            "name": lambda: _text(nvml.nvmlDeviceGetName(h)),
            "uuid": lambda: _text(nvml.nvmlDeviceGetUUID(h)),
            "utilization_pct": lambda: int(nvml.nvmlDeviceGetUtilizationRates(h).gpu),
            "memory": lambda: nvml.nvmlDeviceGetMemoryInfo(h),
            "temperature_c": lambda: int(nvml.nvmlDeviceGetTemperature(h, 0)),  # 0: the GPU die
            "power_w": lambda: round(nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, 1),
        }
        for key, get in readings.items():
            try:
                value = get()
            except Exception:  # NVMLError_NotSupported on some boards and on MIG slices
                continue
            if key == "memory":
                out["memory_used_mb"] = round(value.used / 2**20, 1)
                out["memory_total_mb"] = round(value.total / 2**20, 1)
            else:
                out[key] = value
        return msgspec.convert(out, GpuReading)

    def close(self) -> None:
        """Release NVML."""
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuSampler:
    """The latest reading of the worker's GPU, refreshed every ``interval_s`` off the loop.

    ``device`` says the worker's device once the model is loaded (None before); on a CPU
    device the sampler stops and ``latest`` stays None, so /stats has no ``gpu`` field.
    """

    def __init__(
        self,
        device: Callable[[], str | None],
        open_reader: Callable[[str], GpuReader | None],
        *,
        interval_s: float = GPU_SAMPLE_S,
        read_timeout_s: float = GPU_READ_TIMEOUT_S,
    ) -> None:
        self._device = device
        self._open_reader = open_reader
        self.interval_s = interval_s
        self.read_timeout_s = read_timeout_s
        self.latest: GpuReading | None = None
        #: Set once the sampler knows whether there is a GPU to read (or gave up).
        self.settled = asyncio.Event()
        self._pending: asyncio.Future[GpuReading] | None = None

    async def run(self) -> None:
        """Sample until cancelled (returns at once for a CPU worker)."""
        reader: GpuReader | None = None
        try:
            while reader is None:
                device = self._device()
                if device is not None:
                    try:
                        reader = await asyncio.to_thread(self._open_reader, device)
                    except Exception:  # GPU numbers are a nicety: never take the worker down
                        log.exception("could not open NVML for %s", device)
                    if reader is None:
                        return
                    break
                await asyncio.sleep(self.interval_s / 4)  # the model is still loading
            while True:
                await self._sample(reader)
                self.settled.set()
                await asyncio.sleep(self.interval_s)
        finally:
            self.settled.set()
            if reader is not None:
                await asyncio.to_thread(reader.close)

    async def _sample(self, reader: GpuReader) -> None:
        if self._pending is not None and not self._pending.done():
            return  # the last reading is still stuck in the driver: do not pile up threads
        self._pending = asyncio.ensure_future(asyncio.to_thread(reader.read))
        # A reading that fails after its timeout has no one waiting for it: retrieve it.
        self._pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            async with asyncio.timeout(self.read_timeout_s):
                self.latest = await asyncio.shield(self._pending)
        except TimeoutError:
            log.warning("NVML reading took over %.0fs; GPU stats left out", self.read_timeout_s)
            self.latest = None
        except Exception as exc:
            log.warning("NVML reading failed: %s", exc)
            self.latest = None


def nvml_opener(visible: str | None) -> Callable[[str], GpuReader | None]:
    """Open an NVML reader for a worker's device given its ``CUDA_VISIBLE_DEVICES``."""

    def open_reader(device: str) -> GpuReader | None:
        target = nvml_target(device, visible)
        return None if target is None else NvmlReader.open(target)

    return open_reader
