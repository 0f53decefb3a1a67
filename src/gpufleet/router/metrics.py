"""``GET /metrics``: Prometheus text built from the router's own counters at scrape time.

Nothing on the hot path touches prometheus-client: a collector reads the same counters
``/stats`` shows when Prometheus scrapes, so proxying pays nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpufleet._percentile import percentile_ms
from gpufleet.router.admission import PRIORITIES, Admission
from gpufleet.router.pool import Registry
from gpufleet.router.stats import Totals

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("ready", "starting", "ejected", "draining")


#: ``Totals`` counters with no labels: (metric, help, ``Totals`` attribute), in output order.
_PLAIN_TOTALS: Final = (
    (
        "gpufleet_router_retry_budget_exhausted",
        "Retries the retry budget refused (the failure was answered instead).",
        "budget_exhausted",
    ),
    (
        "gpufleet_router_broken_answers",
        "Answers cut after they began (upstream broke or went silent, deadline).",
        "broken",
    ),
    (
        "gpufleet_router_clients_stalled",
        "Clients dropped for reading nothing within --client-write-timeout.",
        "client_stalled",
    ),
    (
        "gpufleet_router_request_faults",
        "5xx answers the upstream blamed on the request (not counted against it).",
        "request_faults",
    ),
    (
        "gpufleet_router_ejections_held",
        "Passive ejections not made (--max-ejection-percent, or the last ready upstream).",
        "ejections_held",
    ),
    (
        "gpufleet_router_bad_requests",
        "Malformed requests refused by the HTTP parser (400, connection closed).",
        "bad_requests",
    ),
)


class RouterCollector(Collector):
    """Exposes upstream and router counters as Prometheus metrics."""

    def __init__(
        self, registry: Registry, admissions: Mapping[str, Admission], totals: Totals
    ) -> None:
        self._registry = registry
        self._admissions = admissions
        self._totals = totals
        #: More metrics from parts the router was given (the Batch API's), read at scrape.
        self.parts: list[Callable[[], Iterable[Metric]]] = []

    def collect(self) -> Iterator[Metric]:
        """Yield one family per metric (called by prometheus-client at scrape time)."""
        labels = ["upstream", "url", "pool"]
        served = CounterMetricFamily(
            "gpufleet_router_upstream_served", "Answers received from the upstream.", labels=labels
        )
        errors = CounterMetricFamily(
            "gpufleet_router_upstream_errors",
            "Connection errors, timeouts and 5xx answers of the upstream.",
            labels=labels,
        )
        ejections = CounterMetricFamily(
            "gpufleet_router_upstream_ejections", "Times the upstream was ejected.", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "gpufleet_router_upstream_in_flight", "Requests in flight.", labels=labels
        )
        rate = GaugeMetricFamily(
            "gpufleet_router_upstream_rate", "Measured service rate (requests/s).", labels=labels
        )
        latency = GaugeMetricFamily(
            "gpufleet_router_upstream_latency_seconds",
            "Recent latency quantiles.",
            labels=[*labels, "quantile"],
        )
        state = GaugeMetricFamily(
            "gpufleet_router_upstream_state",
            "1 for the upstream's state.",
            labels=[*labels, "state"],
        )
        prompt_tokens = CounterMetricFamily(
            "gpufleet_router_upstream_prompt_tokens",
            "Prompt tokens of LLM answers (their usage).",
            labels=labels,
        )
        completion_tokens = CounterMetricFamily(
            "gpufleet_router_upstream_completion_tokens",
            "Completion tokens of LLM answers (usage, else stream events).",
            labels=labels,
        )
        ttft = GaugeMetricFamily(
            "gpufleet_router_upstream_ttft_seconds",
            "Recent time to first token of LLM streams, quantiles.",
            labels=[*labels, "quantile"],
        )
        itl = GaugeMetricFamily(
            "gpufleet_router_upstream_inter_token_seconds",
            "Recent mean time between tokens of LLM streams, quantiles.",
            labels=[*labels, "quantile"],
        )
        for u in self._registry.all():
            lv = [u.id, u.url, u.pool]
            if u.tokens is not None:
                prompt_tokens.add_metric(lv, u.tokens.prompt)
                completion_tokens.add_metric(lv, u.tokens.completion)
                ttft_s, itl_s = sorted(u.tokens.ttft), sorted(u.tokens.itl)
                for q in (0.5, 0.99):
                    ttft.add_metric([*lv, str(q)], percentile_ms(ttft_s, q) / 1000.0)
                    itl.add_metric([*lv, str(q)], percentile_ms(itl_s, q) / 1000.0)
            served.add_metric(lv, u.served)
            errors.add_metric(lv, u.errors)
            ejections.add_metric(lv, u.ejections)
            in_flight.add_metric(lv, u.in_flight)
            rate.add_metric(lv, u.rate)
            lat = sorted(u.latencies)
            for q in (0.5, 0.99):
                latency.add_metric([*lv, str(q)], percentile_ms(lat, q) / 1000.0)
            for s in STATES:
                state.add_metric([*lv, s], 1.0 if u.state == s else 0.0)
        yield from (served, errors, ejections, in_flight, rate, latency, state)
        yield from (prompt_tokens, completion_tokens, ttft, itl)

        totals = self._totals
        requests = CounterMetricFamily("gpufleet_router_requests", "Requests received.")
        requests.add_metric([], totals.requests)
        responses = CounterMetricFamily(
            "gpufleet_router_responses", "Answers sent, by status class.", labels=["code"]
        )
        for i in range(1, 6):
            responses.add_metric([f"{i}xx"], totals.by_class[i])
        retries = CounterMetricFamily(
            "gpufleet_router_retries",
            "Failed attempts that were followed by another, by why they failed.",
            labels=["reason"],
        )
        for reason, n in sorted(totals.retries_by.items()):
            retries.add_metric([reason], n)
        depth = GaugeMetricFamily(
            "gpufleet_router_queue_depth", "Requests waiting for a slot.", labels=["pool"]
        )
        rejected = CounterMetricFamily(
            "gpufleet_router_rejected", "Requests refused by admission.", labels=["pool"]
        )
        class_depth = GaugeMetricFamily(
            "gpufleet_router_class_queue_depth",
            "Requests waiting for a slot, by priority class (X-Gpufleet-Priority).",
            labels=["pool", "priority"],
        )
        admitted = CounterMetricFamily(
            "gpufleet_router_class_admitted",
            "Requests given a slot, by priority class.",
            labels=["pool", "priority"],
        )
        waited = CounterMetricFamily(
            "gpufleet_router_class_wait_seconds",
            "Seconds admitted requests waited for a slot, summed, by priority class.",
            labels=["pool", "priority"],
        )
        wait_q = GaugeMetricFamily(
            "gpufleet_router_class_wait_quantile_seconds",
            "Recent waits for a slot, quantiles, by priority class.",
            labels=["pool", "priority", "quantile"],
        )
        for name, adm in self._admissions.items():
            depth.add_metric([name], adm.depth)
            rejected.add_metric([name], adm.rejected + adm.timed_out)
            for p in PRIORITIES:
                c = adm.classes[p]
                class_depth.add_metric([name, p], adm.depth_of(p))
                admitted.add_metric([name, p], c.admitted)
                waited.add_metric([name, p], c.wait_total_s)
                waits = sorted(c.waits)
                for q in (0.5, 0.99):
                    wait_q.add_metric([name, p, str(q)], percentile_ms(waits, q) / 1000.0)
        yield from (requests, responses, retries)
        for name, text, attr in _PLAIN_TOTALS:
            family = CounterMetricFamily(name, text)
            family.add_metric([], getattr(totals, attr))
            yield family
        yield from (depth, rejected, class_depth, admitted, waited, wait_q)
        for part in self.parts:
            yield from part()


def metrics_text(collector: RouterCollector) -> bytes:
    """Render the collector's metrics in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
