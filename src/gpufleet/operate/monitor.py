"""``gpufleet monitor [URL]``: a live terminal table of every worker behind a router.

Each poll reads the router's /stats and every worker's own /stats (batch size, queue,
GPU); requests per second come from the served counts of two polls, restarts from the
count a fleet reports (its ``restarts`` label: ``gpufleet up`` knows every restart, also
those before the monitor started and those at a new address) or else from a worker's pid
changing while the monitor watches. ``--errors`` adds the recent
errors: those the workers report, and what the monitor saw change (new errors, a worker
leaving the serving state, a restart).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gpufleet import wire
from gpufleet.config.operate import MonitorConfig
from gpufleet.errors import RequestFailed
from gpufleet.operate.fleetview import FleetView, WorkerView, rates, read_fleet
from gpufleet.wire.http import PeerClient

#: An upstream the router sends to, or a lone worker that serves.
GOOD_STATES = frozenset({wire.UpstreamState.READY, wire.WorkerState.READY})


def gpu_util(gpu: wire.GpuReading | None) -> float | None:
    """GPU utilisation in percent from a worker's ``gpu`` reading (None: not reported)."""
    if gpu is None or gpu.utilization_pct is None:
        return None
    return float(gpu.utilization_pct)


def gpu_memory(gpu: wire.GpuReading | None) -> tuple[float, float] | None:
    """(used, total) GPU memory in MiB from a worker's ``gpu`` reading."""
    if gpu is None or gpu.memory_used_mb is None or gpu.memory_total_mb is None:
        return None
    return gpu.memory_used_mb, gpu.memory_total_mb


@dataclass
class MonitorState:
    """What the monitor remembers between polls: last view, restarts, recent events."""

    last: FleetView | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    events: dict[str, deque[str]] = field(default_factory=dict)
    #: LLM completion tokens per second per worker since the previous view.
    tokens_per_s: dict[str, float] = field(default_factory=dict)

    def observe(self, view: FleetView) -> dict[str, float]:
        """Take a new view; return requests/s per worker since the previous one."""
        rps = rates(self.last, view)
        self.tokens_per_s = rates(self.last, view, "completion_tokens")
        old = self.last.by_id() if self.last else {}
        stamp = time.strftime("%H:%M:%S")
        for w in view.workers:
            prev = old.get(w.id)
            log = self.events.setdefault(w.id, deque(maxlen=20))
            if prev is None:
                continue
            counted, before = fleet_restarts(w), fleet_restarts(prev)
            if counted is not None and before is not None and counted > before:
                log.append(f"{stamp} restarted by the fleet ({counted} in all)")
            elif prev.pid and w.pid and prev.pid != w.pid:
                self.restarts[w.id] = self.restarts.get(w.id, 0) + 1
                log.append(f"{stamp} restarted (pid {prev.pid} → {w.pid})")
            if w.errors is not None and prev.errors is not None and w.errors > prev.errors:
                log.append(f"{stamp} +{w.errors - prev.errors} error(s), {w.errors} in all")
            if prev.state != w.state:
                log.append(f"{stamp} state {prev.state} → {w.state}")
        self.last = view
        return rps


def fleet_restarts(w: WorkerView) -> int | None:
    """Restarts the fleet counted for ``w`` (its router label), None when no fleet says."""
    value = w.labels.get("restarts", "")
    return int(value) if value.isdigit() else None


def _n(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _state(state: str, fleet_state: str | None = None) -> Text:
    draining = state == wire.UpstreamState.DRAINING
    style = "green" if state in GOOD_STATES else "yellow" if draining else "red"
    if fleet_state and fleet_state != wire.MemberState.READY and state not in GOOD_STATES:
        state = f"{state} ({fleet_state})"  # why the fleet took it out: backoff, crash-looping
    return Text(state, style=style)


def worker_table(view: FleetView, rps: dict[str, float], state: MonitorState) -> Table:
    """One row per worker."""
    title = f"{view.url} · {len(view.workers)} worker(s) · {time.strftime('%H:%M:%S')}"
    t = Table(title=title, title_justify="left", expand=False)
    cols = ("worker", "device", "state", "in-flight", "queue", "served", "errors", "req/s")
    llm = any(w.completion_tokens is not None for w in view.workers)
    extra = ("tok/s", "TTFT ms") if llm else ()
    for col in (*cols, "p50 ms", "p99 ms", "batch", "restarts", "GPU %", "GPU mem", *extra):
        t.add_column(col, justify="left" if col in {"worker", "device", "state"} else "right")
    for w in view.workers:
        cells = row_cells(w, rps.get(w.id), state.restarts.get(w.id, 0))
        if llm:
            cells += [
                _n(state.tokens_per_s.get(w.id), "{:,.0f}"),
                _n(w.ttft_p50_ms, "{:,.0f}"),
            ]
        t.add_row(*cells)
    return t


def where(w: WorkerView) -> str:
    """Where a worker runs: the fleet's placement (or GPU index), then its own device."""
    placed = w.labels.get("placement") or w.labels.get("device")
    if placed and placed.isdigit():
        placed = f"gpu{placed}"
    parts = [p for p in (placed, w.device) if p]
    if len(parts) == 2 and parts[0] == parts[1]:
        parts.pop()
    return " · ".join(parts) or "-"


def short_id(w: WorkerView) -> str:
    """A worker's name for a narrow column: its id (``host:port`` when the id is a URL)."""
    name = w.id.split("://", 1)[-1].rstrip("/") if "://" in w.id else w.id
    return name if w.pool == "default" else f"{w.pool}/{name}"


def row_cells(w: WorkerView, rps: float | None, seen_restarts: int) -> list[str | Text]:
    """The cells of one worker's row."""
    mem = gpu_memory(w.gpu)
    restarts = fleet_restarts(w)
    if restarts is None:
        restarts = seen_restarts
    name = short_id(w)
    return [
        name,
        where(w),
        _state(w.state, w.labels.get("fleet_state")),
        _n(w.in_flight),
        _n(w.queue_depth),
        _n(w.served),
        Text(_n(w.errors), style="red" if w.errors else ""),
        _n(rps, "{:,.1f}"),
        _n(w.p50_ms, "{:,.1f}"),
        _n(w.p99_ms, "{:,.1f}"),
        _n(w.avg_batch_size, "{:.2f}"),
        str(restarts),
        _n(gpu_util(w.gpu), "{:.0f}"),
        "-" if mem is None else f"{mem[0] / 1024:.1f}/{mem[1] / 1024:.0f} GiB",
    ]


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def router_line(stats: wire.RouterStats) -> str:
    """The router's own state in words: ``router ready · policy prefix · up 2m05s · …``."""
    totals = stats.totals
    classes = ", ".join(f"{k} {_n(v)}" for k, v in totals.responses.items() if v)
    parts = [
        f"router {stats.state}",
        f"policy {stats.policy}",
        f"up {_uptime(stats.uptime_s)}",
        f"{_n(totals.requests)} requests" + (f" ({classes})" if classes else ""),
        f"{_n(totals.in_flight)} in flight",
        f"{_n(totals.queue_depth)} queued",
        f"{_n(totals.retries)} retries",
    ]
    return " · ".join(parts)


def render(
    view: FleetView, rps: dict[str, float], state: MonitorState, *, errors: bool
) -> RenderableType:
    """The table, the router's totals, and with ``errors`` the recent errors per worker."""
    parts: list[RenderableType] = [worker_table(view, rps, state)]
    if view.router is not None:
        parts.append(Text(router_line(view.router), style="dim"))
    if errors:
        for w in view.workers:
            lines = list(w.recent_errors) + list(state.events.get(w.id, ()))
            if w.stats_error:
                lines.append(f"stats unreadable: {w.stats_error}")
            head = Text(f"{w.id} ({w.url}): ", style="bold")
            body = "\n  ".join(lines[-10:]) if lines else "no recent errors"
            parts.append(Text.assemble(head, "\n  " + body))
    return Group(*parts)


async def snapshot(cfg: MonitorConfig, http: PeerClient) -> RenderableType:
    """Two polls ``interval_s`` apart (rates need two), rendered once."""
    state = MonitorState()
    state.observe(await read_fleet(http, cfg.url, timeout_s=cfg.timeout_s))
    await asyncio.sleep(cfg.interval_s)  # the second poll of a rate measurement
    view = await read_fleet(http, cfg.url, timeout_s=cfg.timeout_s)
    return render(view, state.observe(view), state, errors=cfg.errors)


async def watch(
    cfg: MonitorConfig,
    http: PeerClient,
    live: Live,
    *,
    polls: int | None = None,
    on_error: Callable[[str], None] | None = None,
) -> None:
    """Redraw ``live`` every ``interval_s`` until cancelled (or after ``polls`` polls)."""
    state = MonitorState()
    done = 0
    while polls is None or done < polls:
        try:
            view = await read_fleet(http, cfg.url, timeout_s=cfg.timeout_s)
        except RequestFailed as exc:
            live.update(Text(f"{cfg.url}: {exc.message} (retrying)", style="red"))
            if on_error:
                on_error(exc.message)
        else:
            live.update(render(view, state.observe(view), state, errors=cfg.errors))
        done += 1
        await asyncio.sleep(cfg.interval_s)  # a monitor polls: that is its job
