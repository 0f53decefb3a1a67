"""deploy/grafana/gpufleet.json charts only metrics and labels the code really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from gpufleet.config.router import RouterConfig
from gpufleet.router.app import RouterState
from gpufleet.worker.metrics import WorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "gpufleet.json"
#: Labels Prometheus adds to every scraped series, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}
METRIC = re.compile(r"\bgpufleet_[a-z0-9_]+")
# PromQL words that can stand before "(" or inside braces but are not label names.
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def _families(collector: Collector) -> Iterator[tuple[str, str, set[str]]]:
    """(family name, type, label names) of what ``collector`` exports."""
    for family in collector.collect():
        labels = set(getattr(family, "_labelnames", ()))
        for sample in family.samples:
            labels |= set(sample.labels)
        yield family.name, family.type, labels


def exported() -> dict[str, set[str]]:
    """Every series name the router and a worker export, with its label names."""
    state = RouterState(RouterConfig(workers=("http://127.0.0.1:9",)))
    state.admission(state.registry.pool("default"))  # so per-pool families have samples
    worker = WorkerMetrics("model")
    wrapper_labels = {
        w._name: set(w._labelnames)
        for w in vars(worker).values()
        if isinstance(w, MetricWrapperBase)
    }
    names: dict[str, set[str]] = {}
    for collector in (state.collector, worker.registry):
        for family, kind, labels in _families(collector):
            labels |= wrapper_labels.get(family, set())
            for suffix in SUFFIXES[kind]:
                names[family + suffix] = labels | {"le"} if suffix == "_bucket" else labels
    return names


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) of every query in the dashboard, variables included."""
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            yield f"${var['name']}", query["query"] if isinstance(query, dict) else query, ""


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def test_the_known_names_are_real() -> None:
    names = exported()
    # A sanity check of exported() itself: real series, with their real labels.
    assert names["gpufleet_router_upstream_served_total"] == {"upstream", "url", "pool"}
    assert names["gpufleet_worker_errors_total"] == {"error"}
    assert "le" in names["gpufleet_worker_batch_size_bucket"]
    assert "gpufleet_worker_batch_size" not in names  # a histogram has no bare series
    assert names["gpufleet_worker_info"] == {"model"}


def test_every_query_uses_exported_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    names = exported()
    queries = list(exprs(dashboard))
    assert len(queries) >= 20
    for where, expr, legend in queries:
        used = set(METRIC.findall(expr))
        assert used, f"{where}: {expr!r} charts no gpufleet metric"
        unknown = used - names.keys()
        assert not unknown, f"{where}: {sorted(unknown)} are not exported"
        labels = set().union(*(names[n] for n in used)) | SCRAPE_LABELS
        for group in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in labels, f"{where}: no label {label!r} on {sorted(used)}"
        for label in MATCHER.findall(expr):
            assert label in labels, f"{where}: no label {label!r} on {sorted(used)}"
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert label in labels, f"{where}: legend uses {label!r}, not a label of {used}"


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "gpufleet"
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "pool", "instance"}
    for panel in panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    for _, expr, _ in exprs(dashboard):
        for var in re.findall(r"\$(\w+)", expr):
            assert var in variables or var.startswith("__"), f"unknown variable ${var}"
