"""One snapshot of a fleet, read from a router's or a worker's ``/stats``.

A router answers with a ``workers`` list; a worker answers with ``wire.WorkerStats``.
With ``deep=True`` each upstream's own /stats is read as well (batch size, queue, GPU),
which only a gpufleet worker answers: other upstreams (vLLM, TGI, …) keep what the router
knows of them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from gpufleet.errors import RequestFailed
from gpufleet.wire import WORKER_SERVER_NAME
from gpufleet.wire.http import PeerClient


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What is known of one worker at one moment (None: not reported)."""

    id: str
    url: str
    pool: str = "default"
    state: str = "unknown"
    in_flight: int | None = None
    queue_depth: int | None = None
    served: int | None = None
    errors: int | None = None
    ejections: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rate: float | None = None
    weight: float | None = None
    batches: int | None = None
    avg_batch_size: float | None = None
    max_batch_size: int | None = None
    device: str | None = None
    pid: int | None = None
    restarts: int | None = None
    model: str | None = None
    kind: str | None = None
    gpu: dict[str, Any] = field(default_factory=dict)
    #: Where the fleet says it runs (router ``labels``: ``placement``, ``node``, ``device``…).
    labels: dict[str, str] = field(default_factory=dict)
    recent_errors: tuple[str, ...] = ()
    #: LLM completion tokens the router counted, and its streams' TTFT p50 (router /stats).
    completion_tokens: int | None = None
    ttft_p50_ms: float | None = None
    #: Items the worker itself counts as served (its /stats; the router counts requests).
    items: int | None = None
    #: Why the worker's own /stats could not be read (deep reads only).
    stats_error: str | None = None


@dataclass(frozen=True, slots=True)
class FleetView:
    """A router's (or a single worker's) view of its workers at ``taken_at``."""

    url: str
    is_router: bool
    workers: tuple[WorkerView, ...]
    totals: dict[str, Any]
    taken_at: float
    raw: dict[str, Any]

    @property
    def kind(self) -> str | None:
        """The model kind the first worker that says so reports."""
        return next((w.kind for w in self.workers if w.kind), None)

    @property
    def model(self) -> str | None:
        """The model name the first worker that says so reports."""
        return next((w.model for w in self.workers if w.model), None)

    def by_id(self) -> dict[str, WorkerView]:
        """The workers keyed by id."""
        return {w.id: w for w in self.workers}


def _num(data: dict[str, Any], key: str) -> Any:
    value = data.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _recent_errors(data: dict[str, Any]) -> tuple[str, ...]:
    items = data.get("recent_errors") or data.get("last_errors") or []
    out: list[str] = []
    if isinstance(items, list):
        for item in items[-20:]:
            if isinstance(item, dict):
                parts = [str(item.get(k)) for k in ("time", "error", "message") if item.get(k)]
                out.append(" ".join(parts))
            else:
                out.append(str(item))
    last = data.get("last_error")
    if last and not out:
        out.append(str(last))
    return tuple(out)


def _merge(view: WorkerView, data: dict[str, Any]) -> WorkerView:
    """Fill a view with the fields a source reports (later sources win where they report)."""
    raw_lat = data.get("latency_ms")
    lat: dict[str, Any] = raw_lat if isinstance(raw_lat, dict) else {}
    changes: dict[str, Any] = {}
    for name in (
        "in_flight", "queue_depth", "served", "errors", "ejections", "rate", "weight",
        "batches", "avg_batch_size", "max_batch_size", "pid", "restarts",
    ):  # fmt: skip
        if (value := _num(data, name)) is not None:
            changes[name] = value
    for name in ("pool", "state", "device", "model", "kind"):
        if isinstance(data.get(name), str):
            changes[name] = data[name]
    if isinstance(data.get("items"), int):
        changes["items"] = data["items"]
    if (p50 := _num(lat, "p50")) is not None:
        changes["p50_ms"] = p50
    if (p99 := _num(lat, "p99")) is not None:
        changes["p99_ms"] = p99
    if isinstance(data.get("gpu"), dict):
        changes["gpu"] = dict(data["gpu"])
    if isinstance(data.get("labels"), dict):
        changes["labels"] = {str(k): str(v) for k, v in data["labels"].items()}
    if errors := _recent_errors(data):
        changes["recent_errors"] = errors
    tokens = data.get("tokens")
    if isinstance(tokens, dict):
        if (completion := _num(tokens, "completion")) is not None:
            changes["completion_tokens"] = int(completion)
        ttft = tokens.get("ttft_ms")
        if isinstance(ttft, dict) and (ttft_p50 := _num(ttft, "p50")) is not None:
            changes["ttft_p50_ms"] = ttft_p50
    return replace(view, **changes)


def _items(data: dict[str, Any]) -> int | None:
    """Items the worker put through predict (requests can carry several inputs)."""
    value = _num(data, "batched_items")
    value = _num(data, "served") if value is None else value
    return None if value is None else int(value)


def _worker_from_stats(url: str, data: dict[str, Any]) -> WorkerView:
    return _merge(WorkerView(id=str(data.get("id") or url), url=url), data)


async def read_fleet(
    http: PeerClient, url: str, *, deep: bool = True, timeout_s: float = 3.0
) -> FleetView:
    """Read ``url``'s /stats (and with ``deep``, every upstream's own /stats).

    Raises:
        RequestFailed: ``url`` itself did not answer its /stats with JSON.
    """
    base = url.rstrip("/")
    data = await http.get(base + "/stats", timeout_s=timeout_s)
    if not isinstance(data, dict):
        raise RequestFailed(f"{base}/stats did not answer a JSON object")
    taken_at = time.monotonic()
    if not isinstance(data.get("workers"), list):
        if data.get("server") != WORKER_SERVER_NAME and "served" not in data:
            raise RequestFailed(f"{base}/stats is neither a gpufleet router's nor a worker's")
        view = _worker_from_stats(base, data)
        view = replace(view, items=_items(data))
        return FleetView(base, False, (view,), {}, taken_at, data)
    views = [
        _merge(WorkerView(id=str(w.get("id") or w.get("url")), url=str(w.get("url", ""))), w)
        for w in data["workers"]
        if isinstance(w, dict)
    ]
    if deep:
        views = list(await asyncio.gather(*(_deepen(http, v, timeout_s) for v in views)))
    totals = {k: v for k, v in data.items() if k != "workers"}
    return FleetView(base, True, tuple(views), totals, taken_at, data)


async def _deepen(http: PeerClient, view: WorkerView, timeout_s: float) -> WorkerView:
    if not view.url.startswith(("http://", "https://")):
        return view
    try:
        data = await http.get(view.url.rstrip("/") + "/stats", timeout_s=timeout_s)
    except RequestFailed as exc:
        return replace(view, stats_error=exc.message)
    if not isinstance(data, dict) or data.get("server") != WORKER_SERVER_NAME:
        return view
    # The router's counts are the ones that matter for routing; keep them where it has them.
    kept = {"state", "in_flight", "served", "errors"}
    if view.p50_ms is not None:
        kept.add("latency_ms")
    own = {k: v for k, v in data.items() if k not in kept}
    if view.state == "unknown" and isinstance(data.get("state"), str):
        own["state"] = data["state"]
    own["items"] = _items(data)
    for key in ("in_flight", "served", "errors"):
        if getattr(view, key) is None and key in data:
            own[key] = data[key]
    return _merge(view, own)


def rates(before: FleetView | None, after: FleetView, field: str = "served") -> dict[str, float]:
    """What each worker counted per second between two views (by id): requests, tokens."""
    if before is None:
        return {}
    dt = after.taken_at - before.taken_at
    if dt <= 0:
        return {}
    old = before.by_id()
    out: dict[str, float] = {}
    for w in after.workers:
        prev = old.get(w.id)
        now_n, prev_n = getattr(w, field), getattr(prev, field, None)
        if prev_n is not None and now_n is not None:
            out[w.id] = max(0, now_n - prev_n) / dt  # a restart resets counters: never < 0
    return out
