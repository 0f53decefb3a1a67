"""``gpufleet bench URL``: drive a worker or a router with a bounded load and measure it.

The run reads the target's /stats first (the model's kind picks the default payload; a
router's per-worker counts are read before and after, giving each worker's share and
batch size: ``shares``), sends the load, and returns a :class:`BenchResult` that the CLI prints,
writes as JSON, or draws in an HTML report.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gpufleet.config.operate import BenchConfig
from gpufleet.errors import ConfigError, RequestFailed
from gpufleet.operate import load
from gpufleet.operate.fleetview import FleetView, read_fleet
from gpufleet.operate.shares import WorkerShare, shares_between, shares_from_headers
from gpufleet.operate.summary import LoadSummary, TimelinePoint, summarize, timeline
from gpufleet.wire.http import PeerClient

#: Inputs of the default payload, by model kind (several, so no cache answers them all).
DEFAULT_INPUTS: dict[str, list[str]] = {
    "embeddings": [
        f"Sentence {i}: the quick brown fox jumps over the lazy dog near the river bank."
        for i in range(16)
    ],
    "images": [f"a watercolor lighthouse at dawn, variation {i}" for i in range(16)],
    "chat": [f"In one sentence, what is a GPU? ({i})" for i in range(16)],
    "generic": [f"bench-{i}" for i in range(16)],
}


@dataclass(frozen=True, slots=True)
class ScalingStep:
    """The same load with ``workers`` workers in the pool."""

    workers: int
    summary: LoadSummary
    #: Throughput over ``workers`` × the one-worker throughput (1.0 = linear).
    efficiency: float
    worker_ids: tuple[str, ...] = ()


@dataclass
class BenchResult:
    """Everything one ``gpufleet bench`` run measured."""

    url: str
    path: str
    mode: str
    settings: dict[str, Any]
    summary: LoadSummary
    samples: list[load.Sample]
    kind: str | None = None
    model: str | None = None
    is_router: bool = False
    shares: list[WorkerShare] = field(default_factory=list)
    scaling: list[ScalingStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: str = ""

    def timeline(self) -> list[TimelinePoint]:
        """Throughput and latency over the run, about 30 points (``summary.timeline``)."""
        return timeline(self.samples, end_s=self.summary.duration_s or None)


def read_bodies(path: str | Path) -> list[bytes]:
    """Bodies from a JSON file (one body) or a JSONL file (one body per line).

    Raises:
        ConfigError: the file cannot be read or holds no valid JSON body.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read payload file {p}: {exc.strerror}") from exc
    try:
        return [json.dumps(json.loads(text)).encode()]
    except ValueError:
        pass
    bodies = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            bodies.append(json.dumps(json.loads(line)).encode())
        except ValueError as exc:
            raise ConfigError(f"{p}:{n}: not a JSON body ({exc})") from exc
    if not bodies:
        raise ConfigError(f"payload file {p} holds no JSON body")
    return bodies


def default_bodies(kind: str | None) -> list[bytes]:
    """``{"input": …}`` bodies that fit the model's kind."""
    inputs = DEFAULT_INPUTS.get(kind or "generic", DEFAULT_INPUTS["generic"])
    return [json.dumps({"input": x}).encode() for x in inputs]


def progress_line(cfg: BenchConfig, tally: load.Tally, elapsed_s: float) -> str:
    """``sent 120  ok 118  errors 2  59.0 req/s  2.0s elapsed  ETA 1.4s``: a run so far."""
    done = tally.ok + tally.failed
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    left: float | None
    if cfg.mode == "open":
        left = cfg.duration_s - elapsed_s
    else:
        total = cfg.burst if cfg.mode == "burst" else cfg.requests
        left = (total - done) / rate if rate > 0 else None
    if left is not None:
        left = min(max(0.0, left), cfg.max_duration_s - elapsed_s)
    eta = "ETA ?" if left is None else f"ETA {max(0.0, left):.1f}s"
    return (
        f"bench: sent {tally.sent}  ok {tally.ok}  errors {tally.failed}  "
        f"{rate:.1f} req/s  {elapsed_s:.1f}s elapsed  {eta}"
    )


async def _report_progress(
    cfg: BenchConfig, tally: load.Tally, progress: Callable[[str], None], every_s: float
) -> None:
    started = time.monotonic()
    while True:
        progress(progress_line(cfg, tally, time.monotonic() - started))
        await asyncio.sleep(every_s)


async def run_load(
    session: aiohttp.ClientSession,
    cfg: BenchConfig,
    target: load.Target,
    max_s: float,
    tally: load.Tally | None = None,
) -> tuple[list[load.Sample], float]:
    """One load run of the configured mode, bounded by ``max_s`` seconds.

    The bound is hard: requests still in flight at ``max_s`` are cut off, not awaited.
    """
    if cfg.mode == "burst":
        return await load.burst(session, target, n=cfg.burst, max_duration_s=max_s, tally=tally)
    if cfg.mode == "open":
        return await load.open_loop(
            session,
            target,
            rate=cfg.rate,
            duration_s=cfg.duration_s,
            max_in_flight=cfg.max_in_flight,
            arrival=cfg.arrival,
            rng=random.Random(cfg.seed),
            max_duration_s=max_s,
            tally=tally,
        )
    return await load.closed_loop(
        session,
        target,
        concurrency=cfg.concurrency,
        requests=cfg.requests,
        max_duration_s=max_s,
        tally=tally,
    )


def connector_limit(cfg: BenchConfig) -> int:
    """Connections the client may open: as many as it can have requests in flight."""
    if cfg.mode == "burst":
        return cfg.burst
    return cfg.max_in_flight if cfg.mode == "open" else cfg.concurrency


async def run_bench(
    cfg: BenchConfig, *, progress: Callable[[str], None] | None = None, every_s: float = 0.5
) -> BenchResult:
    """Run the benchmark ``cfg`` describes against ``cfg.url``.

    ``progress`` gets a line (:func:`progress_line`) every ``every_s`` seconds of the
    measured run (the CLI shows it on a terminal).

    Raises:
        RequestFailed: the target does not answer (or, for ``--scaling``, its admin API).
    """
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    # --max-duration bounds the measured load and the warm-up before it together.
    end = time.monotonic() + cfg.max_duration_s
    connector = aiohttp.TCPConnector(limit=connector_limit(cfg), limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        http = PeerClient(session=session)  # /stats reads share the load's connections
        notes: list[str] = []
        before: FleetView | None
        try:
            before = await read_fleet(http, cfg.url)
        except RequestFailed as exc:
            if exc.status is None and "connect" in exc.message.lower():
                raise RequestFailed(f"nothing answers at {cfg.url}: {exc.message}") from exc
            before = None
            notes.append(f"no gpufleet /stats at {cfg.url} ({exc.message}): no per-worker shares")
        kind = before.kind if before else None
        if cfg.payload_file:
            bodies = read_bodies(cfg.payload_file)
        else:
            bodies = default_bodies(kind)
            notes.append(f"payload: default for kind {kind or 'generic'!r}")
        target = load.Target(cfg.url.rstrip("/") + cfg.path, bodies, cfg.timeout_s)
        if cfg.warmup:
            await load.closed_loop(
                session,
                target,
                concurrency=min(cfg.concurrency, cfg.warmup),
                requests=cfg.warmup,
                max_duration_s=end - time.monotonic(),
            )
            if before is not None:
                before = await read_fleet(http, cfg.url)
            if end <= time.monotonic():
                notes.append("the warm-up took all of --max-duration: nothing was measured")
        result = BenchResult(
            url=cfg.url,
            path=cfg.path,
            mode=cfg.mode,
            settings=settings_of(cfg),
            summary=summarize([], 0.0),
            samples=[],
            kind=kind,
            model=before.model if before else None,
            is_router=bool(before and before.is_router),
            notes=notes,
            started_at=started,
        )
        if cfg.scaling:
            from gpufleet.operate.scaling import run_scaling

            await run_scaling(session, cfg, target, result)
            return result
        tally = load.Tally()
        live = None
        if progress is not None:
            live = asyncio.create_task(_report_progress(cfg, tally, progress, every_s))
        try:
            samples, took = await run_load(session, cfg, target, end - time.monotonic(), tally)
        finally:
            if live is not None:
                live.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live
        result.samples, result.summary = samples, summarize(samples, took)
        if before is not None:
            after = await read_fleet(http, cfg.url)
            result.shares = shares_between(before, after)
        if not any(s.served for s in result.shares):
            result.shares = shares_from_headers(samples) or result.shares
        return result


def settings_of(cfg: BenchConfig) -> dict[str, Any]:
    """The settings that shaped the load, for the report and the JSON."""
    keys = {
        "closed": ("concurrency", "requests"),
        "open": ("rate", "duration_s", "arrival", "max_in_flight"),
        "burst": ("burst",),
    }[cfg.mode]
    out: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    out.update(
        timeout_s=cfg.timeout_s,
        max_duration_s=cfg.max_duration_s,
        payload_file=cfg.payload_file,
        scaling=cfg.scaling,
    )
    return out


__all__ = [
    "DEFAULT_INPUTS",
    "BenchResult",
    "ScalingStep",
    "WorkerShare",
    "connector_limit",
    "default_bodies",
    "progress_line",
    "read_bodies",
    "run_bench",
    "run_load",
    "settings_of",
    "shares_between",
    "shares_from_headers",
]
