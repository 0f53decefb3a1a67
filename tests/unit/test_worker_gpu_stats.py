"""The worker's GPU readings for /stats: which NVML device, what is read, never on the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pytest

from gpufleet import wire
from gpufleet.wire import GpuReading
from gpufleet.worker.stats import GpuSampler, NvmlReader, nvml_opener, nvml_target
from tests.unit._virtual_time import VirtualTimeLoop, on_virtual_time

P = ParamSpec("P")
T = TypeVar("T")


@pytest.mark.parametrize(
    ("device", "visible", "expected"),
    [
        ("cpu", None, None),
        ("mps", "0", None),
        ("cuda", None, 0),
        ("cuda:1", None, 1),
        ("cuda", "3", 3),  # a worker pinned to physical GPU 3 sees it as cuda:0
        ("cuda:1", "3,5", 5),
        ("cuda:0", " GPU-8f3a ", "GPU-8f3a"),
        ("cuda:0", "", None),  # the mask hides every GPU
        ("cuda:2", "0,1", None),
        ("cuda:0", "-1", None),
        ("cuda:x", None, None),
    ],
)
def test_nvml_target_follows_the_process_mask(
    device: str, visible: str | None, expected: int | str | None
) -> None:
    assert nvml_target(device, visible) == expected


class NotSupported(Exception):
    pass


@dataclass
class Memory:
    used: int
    total: int


@dataclass
class Util:
    gpu: int
    memory: int


class FakeNvml:
    """The few NVML calls the reader makes, over two made-up GPUs."""

    def __init__(self, *, fail_init: bool = False, no_util: bool = False) -> None:
        self.fail_init = fail_init
        self.no_util = no_util
        self.initialised = 0
        self.gpus: list[dict[str, Any]] = [
            {"uuid": b"GPU-aaaa", "name": b"Fake A100", "util": 37, "used": 3 * 2**30},
            {"uuid": "GPU-bbbb", "name": "Fake H100", "util": 91, "used": 70 * 2**30},
        ]

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NotSupported("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise NotSupported("Invalid Argument")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        for i, gpu in enumerate(self.gpus):
            if gpu["uuid"] in (uuid, uuid.encode()):
                return i
        raise NotSupported("Not Found")

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return h

    def nvmlDeviceGetName(self, h: int) -> Any:
        return self.gpus[h]["name"]

    def nvmlDeviceGetUUID(self, h: int) -> Any:
        return self.gpus[h]["uuid"]

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Util:
        if self.no_util:
            raise NotSupported("Not Supported")  # MIG slices answer this
        return Util(self.gpus[h]["util"], 0)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Memory:
        return Memory(self.gpus[h]["used"], 80 * 2**30)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 55

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 312_345  # milliwatts


def test_nvml_reader_reads_the_targeted_gpu() -> None:
    nvml = FakeNvml()
    reader = NvmlReader.open(1, nvml)
    assert reader is not None
    assert reader.read() == GpuReading(
        index=1,
        name="Fake H100",
        uuid="GPU-bbbb",
        utilization_pct=91,
        memory_used_mb=70 * 1024.0,
        memory_total_mb=80 * 1024.0,
        temperature_c=55,
        power_w=312.3,
    )
    by_uuid = NvmlReader.open("GPU-aaaa", nvml)
    assert by_uuid is not None
    assert by_uuid.read().name == "Fake A100"
    by_uuid.close()
    reader.close()
    assert nvml.initialised == 0


def test_nvml_reader_leaves_out_what_the_board_refuses() -> None:
    reader = NvmlReader.open(0, FakeNvml(no_util=True))
    assert reader is not None
    reading = reader.read()
    assert reading.utilization_pct is None
    assert b"utilization_pct" not in wire.encode(reading)  # left out of /stats' gpu
    assert reading.memory_used_mb == 3 * 1024.0


def test_nvml_reader_is_none_without_nvml_or_device() -> None:
    assert NvmlReader.open(0, FakeNvml(fail_init=True)) is None
    nvml = FakeNvml()
    assert NvmlReader.open(7, nvml) is None
    assert NvmlReader.open("GPU-none", nvml) is None
    assert nvml.initialised == 0
    # This machine has nvidia-ml-py but no driver: the real module says "no GPU" too.
    assert NvmlReader.open(0) is None
    assert nvml_opener(None)("cuda:0") is None
    assert nvml_opener("0")("cpu") is None


class FakeReader:
    """Counts readings and the threads they ran on; ``gate`` holds one reading back."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.threads: list[int] = []
        self.closed = False
        self.n = 0

    def read(self) -> GpuReading:
        self.threads.append(threading.get_ident())
        self.n += 1
        if self.gate is not None:
            self.gate.wait(10)
        return GpuReading(utilization_pct=self.n, memory_used_mb=1.0, memory_total_mb=2.0)

    def close(self) -> None:
        self.closed = True


async def test_sampler_waits_for_the_device_then_reads_off_the_loop() -> None:
    reader = FakeReader()
    device: list[str | None] = [None]
    opened: list[str] = []

    def open_reader(name: str) -> FakeReader:
        opened.append(name)
        return reader

    asked = 0
    asked_thrice = asyncio.Event()

    def which_device() -> str | None:
        nonlocal asked
        asked += 1
        if asked == 3:
            asked_thrice.set()
        return device[0]

    sampler = GpuSampler(which_device, open_reader, interval_s=0.05)
    task = asyncio.create_task(sampler.run())
    async with asyncio.timeout(10):
        await asked_thrice.wait()
    assert opened == []  # still loading after three looks: nothing opened, nothing reported
    assert sampler.latest is None
    device[0] = "cuda:0"
    async with asyncio.timeout(10):
        await sampler.settled.wait()
    for _ in range(500):  # readings keep coming, one every interval
        if reader.n >= 3:
            break
        await asyncio.sleep(0.01)
    assert reader.n >= 3
    assert opened == ["cuda:0"]
    assert sampler.latest is not None
    assert (sampler.latest.utilization_pct or 0) >= 1
    assert threading.get_ident() not in reader.threads
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reader.closed


async def test_sampler_on_a_cpu_worker_reports_nothing() -> None:
    sampler = GpuSampler(lambda: "cpu", nvml_opener(None), interval_s=0.05)
    async with asyncio.timeout(10):
        await sampler.run()  # returns: nothing to sample
    assert sampler.settled.is_set()
    assert sampler.latest is None


class _CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting what is handed to a thread (at once, on the loop)."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@on_virtual_time  # the read timeout and the rounds run on the loop's virtual clock
async def test_a_stuck_reading_is_dropped_and_not_piled_up() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    loop.threads_hold_the_clock = False  # the read never returns: time must go on meanwhile
    threads = _CountingExecutor()
    loop.set_default_executor(threads)
    gate = threading.Event()
    reader = FakeReader(gate)
    sampler = GpuSampler(lambda: "cuda", lambda _: reader, interval_s=0.02, read_timeout_s=0.1)
    sampler.latest = GpuReading(utilization_pct=99)  # a reading from before the driver wedged
    task = asyncio.create_task(sampler.run())
    try:
        # No timer of the test's own here: the virtual clock would jump to it while the
        # opener's thread runs (pytest-timeout bounds the test).
        await sampler.settled.wait()
        assert loop.time() == pytest.approx(0.1)  # given up at the read timeout
        assert sampler.latest is None  # stale numbers are not shown as current
        await asyncio.sleep(0.3)  # 15 rounds while the first reading is stuck
        assert threads.submitted == 2  # the opener and the one stuck read, no more
        assert reader.n <= 1
        assert sampler.latest is None
    finally:
        gate.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_failing_opener_leaves_the_worker_without_gpu_numbers() -> None:
    def broken(device: str) -> FakeReader:
        raise RuntimeError("driver exploded")

    sampler = GpuSampler(lambda: "cuda", broken, interval_s=0.05)
    async with asyncio.timeout(10):
        await sampler.run()  # returns instead of raising
    assert sampler.latest is None
    assert sampler.settled.is_set()


def test_gpu_gauges_appear_only_with_a_reading() -> None:
    from gpufleet.worker.metrics import WorkerMetrics

    m = WorkerMetrics("synthetic")
    m.set_gpu(None)
    assert b"gpufleet_worker_gpu_utilization_percent{" not in m.render()
    m.set_gpu(
        GpuReading(index=3, utilization_pct=87, memory_used_mb=1024.0, memory_total_mb=81920.0)
    )
    text = m.render().decode()
    assert 'gpufleet_worker_gpu_utilization_percent{gpu="3"} 87.0' in text
    used = [
        line for line in text.splitlines() if line.startswith("gpufleet_worker_gpu_memory_used")
    ]
    assert len(used) == 1
    assert used[0].startswith('gpufleet_worker_gpu_memory_used_bytes{gpu="3"} ')
    assert float(used[0].split()[-1]) == 1024 * 2**20
    assert 'gpufleet_worker_gpu_memory_total_bytes{gpu="3"}' in text
