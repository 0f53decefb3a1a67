"""``gpufleet status``: the run directory's state joined with live router and worker ``/stats``."""

from __future__ import annotations

import asyncio
from typing import Any

from gpufleet.errors import RequestFailed
from gpufleet.fleet.rundir import RunDir, is_gpufleet
from gpufleet.wire.http import PeerClient

#: Seconds a /stats of a process that may be gone gets.
_STATS_TIMEOUT_S = 2.0


async def _get_stats(http: PeerClient, url: str) -> dict[str, Any] | None:
    """A /stats answer as a JSON object; None when nothing (or something else) answered."""
    try:
        return await http.get(url, into=dict[str, Any], timeout_s=_STATS_TIMEOUT_S)
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
        router_stats, *worker_stats = await asyncio.gather(
            _get_stats(http, f"{state.get('endpoint', '')}/stats"),
            *(_get_stats(http, f"{w.get('url', '')}/stats") for w in workers),
        )
    by_url: dict[str, dict[str, Any]] = {}
    for up in (router_stats or {}).get("workers", []):
        if isinstance(up, dict) and up.get("state") != "removed":
            by_url[str(up.get("url", "")).rstrip("/")] = up
    for w, own in zip(workers, worker_stats, strict=True):
        seen = by_url.get(str(w.get("url", "")).rstrip("/"))
        w["router_state"] = seen.get("state") if seen else None
        source = seen or own or {}
        w["served"] = source.get("served")
        w["in_flight"] = source.get("in_flight")
        w["worker_stats"] = own
    state["router_stats"] = router_stats
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
