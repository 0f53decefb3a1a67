"""Bench results for people (rich tables) and for machines (plain JSON)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

from gpufleet.operate.bench import BenchResult
from gpufleet.operate.summary import LoadSummary


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.1f}"


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 100:.0f}%"


def summary_table(s: LoadSummary, title: str) -> Table:
    """Throughput, latency percentiles and counts of one load run."""
    t = Table(title=title, title_justify="left", show_header=True)
    for col in ("requests", "ok", "failed", "time s", "req/s", "p50 ms", "p90 ms", "p99 ms"):
        t.add_column(col, justify="right")
    t.add_column("max ms", justify="right")
    lat = s.latency_ms
    t.add_row(
        str(s.sent), str(s.ok), str(s.failed), f"{s.duration_s:.2f}", f"{s.throughput_rps:,.1f}",
        _ms(lat.get("p50")), _ms(lat.get("p90")), _ms(lat.get("p99")), _ms(lat.get("max")),
    )  # fmt: skip
    return t


def render(result: BenchResult) -> RenderableType:
    """The whole result as rich renderables: summary, errors, shares, scaling, notes."""
    parts: list[RenderableType] = []
    what = f"{result.mode} loop" if result.mode != "burst" else "burst"
    head = f"{result.url}{result.path} · {what} · " + ", ".join(
        f"{k}={v}" for k, v in result.settings.items() if v not in (None, False)
    )
    parts.append(summary_table(result.summary, head))
    if result.summary.errors or result.summary.not_sent:
        t = Table(title="errors by kind", title_justify="left")
        t.add_column("kind")
        t.add_column("count", justify="right")
        for kind, n in result.summary.errors.items():
            t.add_row(kind, str(n))
        if result.summary.not_sent:
            t.add_row("not sent (client at --max-in-flight)", str(result.summary.not_sent))
        parts.append(t)
    if result.shares:
        t = Table(title="share of each worker", title_justify="left")
        for col in ("worker", "url", "served", "share", "batches", "avg batch"):
            t.add_column(col, justify="left" if col in {"worker", "url"} else "right")
        for w in result.shares:
            t.add_row(
                w.id, w.url, str(w.served), f"{w.share * 100:.1f}%",
                "-" if w.batches is None else str(w.batches),
                "-" if w.avg_batch_size is None else f"{w.avg_batch_size:.2f}",
            )  # fmt: skip
        parts.append(t)
    if result.scaling:
        t = Table(title="scaling", title_justify="left")
        for col in ("workers", "req/s", "speed-up", "efficiency", "p50 ms", "p99 ms", "errors"):
            t.add_column(col, justify="right")
        one = result.scaling[0].summary.throughput_rps
        for step in result.scaling:
            s = step.summary
            t.add_row(
                str(step.workers), f"{s.throughput_rps:,.1f}",
                f"{s.throughput_rps / one:.2f}×" if one > 0 else "-", _pct(step.efficiency),
                _ms(s.latency_ms.get("p50")), _ms(s.latency_ms.get("p99")), str(s.failed),
            )  # fmt: skip
        parts.append(t)
    parts.extend(f"note: {n}" for n in result.notes)
    return Group(*parts)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(result: BenchResult) -> dict[str, Any]:
    """The result as JSON-able data (NaN becomes null; samples are left out)."""
    data = {
        "url": result.url,
        "path": result.path,
        "mode": result.mode,
        "settings": result.settings,
        "started_at": result.started_at,
        "kind": result.kind,
        "model": result.model,
        "is_router": result.is_router,
        "summary": dataclasses.asdict(result.summary),
        "shares": [dataclasses.asdict(w) for w in result.shares],
        "scaling": [
            {
                "workers": s.workers,
                "throughput_rps": s.summary.throughput_rps,
                "efficiency": s.efficiency,
                "worker_ids": list(s.worker_ids),
                "summary": dataclasses.asdict(s.summary),
            }
            for s in result.scaling
        ],
        "timeline": [dataclasses.asdict(p) for p in result.timeline()],
        "notes": result.notes,
    }
    return {k: _clean(v) for k, v in data.items()}
