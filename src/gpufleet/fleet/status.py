"""``gpufleet status``: the run directory's state joined with live router and worker ``/stats``."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from gpufleet import wire
from gpufleet.errors import RequestFailed
from gpufleet.fleet.rundir import RunDir, is_gpufleet
from gpufleet.wire.http import PeerClient

T = TypeVar("T")

#: Seconds a /stats of a process that may be gone gets.
_STATS_TIMEOUT_S = 2.0


async def _get_stats(http: PeerClient, url: str, into: type[T]) -> T | None:
    """A /stats answer decoded into ``into``; None when nothing (or something else) answered."""
    try:
        return await http.get(url, into=into, timeout_s=_STATS_TIMEOUT_S)
    except RequestFailed:
        return None


async def collect(run_dir: RunDir) -> dict[str, Any] | None:
    """The fleet's state with ``served`` / ``in_flight`` filled from live ``/stats``.

    Served and in-flight come from the router (what it sent each worker) when it lists
    the worker, else from the worker's own ``/stats``; foreign servers show None.
    """
    state = run_dir.read_state()
    if state is None:
        return None
    pid = state.get("pid")
    state["alive"] = isinstance(pid, int) and is_gpufleet(pid)
    workers: list[dict[str, Any]] = state.get("workers", [])
    async with PeerClient() as http:
        router, owns = await asyncio.gather(
            _get_stats(http, f"{state.get('endpoint', '')}/stats", wire.RouterStats),
            asyncio.gather(
                *(_get_stats(http, f"{w.get('url', '')}/stats", wire.WorkerStats) for w in workers)
            ),
        )
    by_url = {
        up.url.rstrip("/"): up
        for up in (router.workers if router else [])
        if up.state != wire.UpstreamState.REMOVED
    }
    for w, own in zip(workers, owns, strict=True):
        seen = by_url.get(str(w.get("url", "")).rstrip("/"))
        w["router_state"] = None if seen is None else str(seen.state)
        source = seen or own
        w["served"] = None if source is None else source.served
        w["in_flight"] = None if source is None else source.in_flight
        w["worker_stats"] = None if own is None else wire.to_builtins(own)
    state["router_stats"] = None if router is None else wire.to_builtins(router)
    return state


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_status(state: dict[str, Any]) -> str:
    """A plain-text table: one line per worker, then the router and the endpoint.

    A fleet that no longer runs gets one line (and its workers' last failures), not the
    table of a past run.
    """
    alive = state.get("alive")
    errors = [w for w in state.get("workers", []) if w.get("last_error")]
    failures = [
        f"  {w.get('name')}: last failure: {w['last_error']} (log {w.get('log')})" for w in errors
    ]
    if not alive:
        last = state.get("phase", "?")
        head = f"fleet pid {state.get('pid')} is not running (last seen {last})"
        head += "; start one with `gpufleet up`"
        return "\n".join([head, *failures])
    phase = state.get("phase", "?")
    lines = [f"fleet pid {state.get('pid')}: {phase}   endpoint {state.get('endpoint')}"]
    header = ("POOL", "DEVICE", "PID", "PORT", "STATE", "RESTARTS", "SERVED", "IN-FLIGHT")
    rows = [header]
    for w in state.get("workers", []):
        status = w.get("state", "?")
        if w.get("next_try_in_s") is not None and status in {"backoff", "crash-looping"}:
            status += f" (retry in {w['next_try_in_s']}s)"
        rows.append(
            (
                _cell(w.get("pool")),
                _cell(w.get("device")),
                _cell(w.get("pid")),
                _cell(w.get("port")),
                status,
                _cell(w.get("restarts")),
                _cell(w.get("served")),
                _cell(w.get("in_flight")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    router = state.get("router", {})
    totals = (state.get("router_stats") or {}).get("totals", {})
    lines.append(
        f"router pid {_cell(router.get('pid'))}  state {router.get('state', '?')}  "
        f"restarts {_cell(router.get('restarts'))}  "
        f"requests {_cell(totals.get('requests'))}  in-flight {_cell(totals.get('in_flight'))}"
    )
    return "\n".join([*lines, *failures])


__all__ = ["collect", "format_status"]
