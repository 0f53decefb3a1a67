"""The Prometheus metrics a worker exports on ``GET /metrics`` (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gpufleet.wire import GpuReading

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """Counters and histograms of one worker process, in a registry of its own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gpufleet_worker_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.errors = Counter(
            "gpufleet_worker_errors",
            "Requests that failed, by error name.",
            ["error"],
            registry=r,
        )
        self.dropped = Counter(
            "gpufleet_worker_dropped_items",
            "Items removed before predict, by reason (cancelled or expired).",
            ["reason"],
            registry=r,
        )
        self.bad_requests = Counter(
            "gpufleet_worker_bad_requests",
            "Malformed requests refused by the HTTP parser (400, connection closed).",
            registry=r,
        )
        self.oom = Counter(
            "gpufleet_worker_oom_splits", "Batches split after an out-of-memory error.", registry=r
        )
        self.batch_size = Histogram(
            "gpufleet_worker_batch_size",
            "Items per predict call.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "gpufleet_worker_queue_seconds",
            "Time an item waited in the queue before its batch started.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.compute_time = Histogram(
            "gpufleet_worker_compute_seconds",
            "Wall time of one predict call.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.request_time = Histogram(
            "gpufleet_worker_request_seconds",
            "Time from a request's arrival to its answer (served requests).",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "gpufleet_worker_queue_depth", "Items waiting in the queue.", registry=r
        )
        self.in_flight = Gauge("gpufleet_worker_in_flight", "Requests being handled.", registry=r)
        self.max_batch_size = Gauge(
            "gpufleet_worker_max_batch_size", "Effective largest batch.", registry=r
        )
        self.ready = Gauge(
            "gpufleet_worker_ready", "1 when the model is loaded and not draining.", registry=r
        )
        self.stalled = Gauge(
            "gpufleet_worker_stalled",
            "1 while the device thread has finished nothing for --stall-timeout with work"
            " pending (checked at each /health, /stats and /metrics).",
            registry=r,
        )
        self.stalls = Counter(
            "gpufleet_worker_stalls", "Times the worker turned stalled.", registry=r
        )
        # GPU numbers (NVML): labelled by the GPU, so a CPU worker exports none at all.
        self.gpu_utilization = Gauge(
            "gpufleet_worker_gpu_utilization_percent",
            "GPU busy share over NVML's last sample period.",
            ["gpu"],
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "gpufleet_worker_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"], registry=r
        )
        self.gpu_memory_total = Gauge(
            "gpufleet_worker_gpu_memory_total_bytes", "GPU memory in all.", ["gpu"], registry=r
        )
        info = Gauge("gpufleet_worker_info", "The model this worker serves.", ["model"], registry=r)
        info.labels(model=model).set(1)

    def set_gpu(self, reading: GpuReading | None) -> None:
        """Copy the latest NVML reading (``/stats``'s ``gpu``) into the GPU gauges."""
        if reading is None:
            return
        gpu = str(reading.index if reading.index is not None else reading.uuid or "0")
        if reading.utilization_pct is not None:
            self.gpu_utilization.labels(gpu=gpu).set(reading.utilization_pct)
        if reading.memory_used_mb is not None:
            self.gpu_memory_used.labels(gpu=gpu).set(reading.memory_used_mb * 2**20)
        if reading.memory_total_mb is not None:
            self.gpu_memory_total.labels(gpu=gpu).set(reading.memory_total_mb * 2**20)

    def render(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)
