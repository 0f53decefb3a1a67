"""Which worker served what part of a bench run, and the batches it formed meanwhile.

From two views of the fleet's ``/stats`` (before and after the run: ``shares_between``),
or, when those are not to be had, from the router's ``X-Gpufleet-Upstream`` header on
each answer (``shares_from_headers``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gpufleet.operate import load
from gpufleet.operate.fleetview import FleetView, WorkerView


@dataclass(frozen=True, slots=True)
class WorkerShare:
    """How much of the run one worker served, and the batches it formed meanwhile."""

    id: str
    url: str
    served: int
    share: float
    batches: int | None = None
    avg_batch_size: float | None = None


def _restarted(now: WorkerView, then: WorkerView) -> bool:
    """True when a counter of the worker went down: it restarted, and counts from zero."""
    if now.pid is not None and then.pid is not None and now.pid != then.pid:
        return True
    pairs = ((now.served, then.served), (now.batches, then.batches), (now.items, then.items))
    return any(a is not None and b is not None and a < b for a, b in pairs)


def shares_between(before: FleetView, after: FleetView) -> list[WorkerShare]:
    """Each worker's part of what was served between two views of the fleet.

    A worker restarted in between counts from zero again (everything it counts now is
    new), so no delta is ever negative and its batches and items agree.
    """
    old = before.by_id()
    rows: list[tuple[str, str, int, int | None, int | None]] = []
    for w in after.workers:
        prev = old.get(w.id)
        if prev is None or _restarted(w, prev):
            base = WorkerView(w.id, w.url, served=0, batches=0, items=0)
            known = prev is not None
        else:
            base, known = prev, True
        served = (w.served or 0) - (base.served or 0)
        batches = items = None
        if known and w.batches is not None and base.batches is not None:
            batches = w.batches - base.batches
        if known and w.items is not None and base.items is not None:
            items = w.items - base.items
        rows.append((w.id, w.url, max(0, served), batches, items))
    total = sum(r[2] for r in rows)
    return [
        WorkerShare(
            id=wid,
            url=url,
            served=served,
            share=served / total if total else 0.0,
            batches=batches,
            avg_batch_size=(items / batches) if items is not None and batches else None,
        )
        for wid, url, served, batches, items in rows
    ]


def shares_from_headers(samples: list[load.Sample]) -> list[WorkerShare]:
    """Shares counted from the router's upstream header on each answer."""
    counts = Counter(s.upstream for s in samples if s.ok and s.upstream)
    total = sum(counts.values())
    return [WorkerShare(u, u, n, n / total) for u, n in sorted(counts.items())]


__all__ = ["WorkerShare", "shares_between", "shares_from_headers"]
