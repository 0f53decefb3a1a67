"""Prometheus text for the simulated engine, under vLLM's metric names."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpufleet.testing.llm.engine import Engine


class Histogram:
    """A cumulative histogram over fixed upper bounds (plus +Inf)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


def _fmt(value: float) -> str:
    return repr(float(value))


def render_metrics(engine: Engine) -> str:
    """``GET /metrics``: vLLM's gauges, counters and histograms for one engine."""
    sched = engine.scheduler
    labels = f'engine="0",model_name="{engine.cfg.model_name}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help: str, value: float, sample: str | None = None) -> None:
        lines.append(f"# HELP {name} {help}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{sample or name}{{{labels}}} {_fmt(value)}")

    def histogram(name: str, help: str, hist: Histogram) -> None:
        lines.append(f"# HELP {name} {help}")
        lines.append(f"# TYPE {name} histogram")
        total = 0
        for bound, n in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
            total += n
            le = "+Inf" if bound == float("inf") else _fmt(bound)
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {_fmt(total)}')
        lines.append(f"{name}_count{{{labels}}} {_fmt(hist.count)}")
        lines.append(f"{name}_sum{{{labels}}} {_fmt(hist.sum)}")

    gauges = (
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            len(sched.running),
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            len(sched.waiting),
        ),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", sched.kv_usage),
    )
    counters = (
        ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
         sched.prefix_cache_queries),
        ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
         sched.prefix_cache_hits),
        ("vllm:prompt_tokens", "Number of prefill tokens processed.", sched.prompt_tokens),
        ("vllm:generation_tokens", "Number of generation tokens processed.",
         sched.generation_tokens),
        ("vllm:num_preemptions", "Cumulative number of preemption from the engine.", 0),
    )  # fmt: skip
    for name, help, value in gauges:
        metric(name, "gauge", help, value)
    for name, help, value in counters:
        # prometheus_client's convention, which vLLM follows: the sample has _total.
        metric(name, "counter", help, value, sample=name + "_total")
    histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
              engine.ttft)  # fmt: skip
    histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
              engine.e2e)  # fmt: skip
    return "\n".join(lines) + "\n"
