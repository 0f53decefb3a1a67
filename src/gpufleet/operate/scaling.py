"""``bench --scaling``: the same load with N, N-1, … 1 workers, drained through the admin API.

Workers leave the pool one at a time (``POST /admin/workers/{id}/drain``); after the last
step, and whatever happens (errors, Ctrl-C), each drained worker is added
again with its URL, pool and weight (the router puts it back into rotation after a good
probe), so the fleet ends as it began.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gpufleet.config.operate import BenchConfig
from gpufleet.errors import RequestFailed
from gpufleet.operate.bench import BenchResult, ScalingStep, run_load, shares_between
from gpufleet.operate.fleetview import read_fleet
from gpufleet.operate.load import Target
from gpufleet.operate.summary import LoadSummary, summarize
from gpufleet.wire import UpstreamState, UpstreamView
from gpufleet.wire.admin_client import AdminClient
from gpufleet.wire.http import PeerClient

#: States in which a router sends requests to an upstream.
SERVING = frozenset({UpstreamState.READY})


async def _wait_for(
    http: PeerClient, url: str, ids: set[str], serving: bool, timeout_s: float
) -> bool:
    """Poll the router's /stats until every id in ``ids`` is (or is no longer) serving."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = await read_fleet(http, url, deep=False)
        states = {w.id: w.state for w in view.workers}
        if serving and all(states.get(i) in SERVING for i in ids):
            return True
        if not serving and all(states.get(i) not in SERVING for i in ids):
            return True
        await asyncio.sleep(0.1)  # the router's state is only observable by polling
    return False


async def _restore(admin: AdminClient, drained: list[UpstreamView]) -> list[str]:
    """Bring drained workers back by adding their URLs again."""
    problems: list[str] = []
    new_ids: set[str] = set()
    for up in drained:
        # Adding a drained URL again puts it back in rotation (after a good probe).
        try:
            new_ids.add((await admin.add(up.url, up.pool, weight=up.weight)).id)
        except RequestFailed as exc:
            problems.append(f"could not re-add {up.url}: {exc.message}")
    if new_ids and not await _wait_for(admin.http, admin.url, new_ids, True, 30.0):
        problems.append("re-added workers were not healthy again within 30 s")
    return problems


def _efficiency(summary: LoadSummary, workers: int, one: LoadSummary | None) -> float:
    if one is None or one.throughput_rps <= 0 or workers <= 0:
        return float("nan")
    return summary.throughput_rps / (workers * one.throughput_rps)


async def run_scaling(
    session: aiohttp.ClientSession, cfg: BenchConfig, target: Target, result: BenchResult
) -> None:
    """Fill ``result.scaling`` (ascending worker counts) and keep the largest step's samples."""
    if cfg.admin_token is None:  # BenchConfig refuses this; kept for the type checker
        raise RequestFailed("--scaling needs --admin-token")
    http = PeerClient(session=session)
    admin = AdminClient(http, cfg.url, cfg.admin_token)
    ups = [u for u in await admin.list() if u.state in SERVING]
    if not ups:
        raise RequestFailed("the router has no serving worker to scale over")
    per_step_s = cfg.max_duration_s / len(ups)
    steps: dict[int, tuple[LoadSummary, tuple[str, ...]]] = {}
    drained: list[UpstreamView] = []
    try:
        for k in range(len(ups), 0, -1):
            active = ups[:k]
            if k < len(ups):
                gone = ups[k]
                await admin.drain(gone.id)
                drained.append(gone)
                if not await _wait_for(http, cfg.url, {gone.id}, False, 10.0):
                    result.notes.append(f"{gone.url} still looked serving after its drain")
            before = await read_fleet(http, cfg.url)
            samples, took = await run_load(session, cfg, target, per_step_s)
            summary = summarize(samples, took)
            steps[k] = (summary, tuple(u.id for u in active))
            if k == len(ups):
                after = await read_fleet(http, cfg.url)
                result.samples, result.summary = samples, summary
                result.shares = shares_between(before, after)
    finally:
        if drained:
            result.notes.extend(await _restore(admin, drained))
    one = steps[1][0] if 1 in steps else None
    result.scaling = [
        ScalingStep(k, summary, _efficiency(summary, k, one), ids)
        for k, (summary, ids) in sorted(steps.items())
    ]
