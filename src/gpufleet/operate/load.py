"""Load generation: closed loop, open loop and burst, one ``Sample`` per request.

Every run is bounded: a closed loop by its request count and a deadline, an open loop by
its duration and a cap on requests in flight (arrivals past the cap are recorded as not
sent rather than queued, so the client never hides the server's queueing in its own), a
burst by its size. A run's ``max_duration_s`` is a hard bound: no request is sent past it,
and one still in flight then is cut off (each request's budget is its timeout or what is
left of the run, whichever ends first).
Open-loop latencies count from the *scheduled* send time, so a stalled client cannot hide
a stalled server (coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from gpufleet.wire import UPSTREAM_HEADER, error_name

NOT_SENT = "not sent (client at --max-in-flight)"
#: The error of a request still in flight when the run's ``--max-duration`` ran out.
CUT_OFF = "cut off at --max-duration"


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it was due (s from the start), how long it took, how it ended."""

    start_s: float
    latency_s: float
    status: int | None
    #: None when the request succeeded, else its kind ("503 WorkerOverloaded", "timeout", …).
    error: str | None = None
    upstream: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class Tally:
    """Running counts of a load run, read by a live progress line while it runs."""

    sent: int = 0
    ok: int = 0
    failed: int = 0

    def record(self, sample: Sample) -> Sample:
        """Count ``sample`` as done; returns it."""
        if sample.ok:
            self.ok += 1
        else:
            self.failed += 1
        return sample


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes and what it sends (bodies are used in turn)."""

    url: str
    bodies: Sequence[bytes]
    timeout_s: float = 60.0
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)

    def body(self, i: int) -> bytes:
        return self.bodies[i % len(self.bodies)]


def error_kind(status: int, body: bytes) -> str:
    """Name a failed answer by its status and the ``error`` field of a gpufleet payload."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    name = error_name(data)
    return f"{status} {name}" if name else f"HTTP {status}"


async def send(
    session: aiohttp.ClientSession,
    target: Target,
    i: int,
    t0: float,
    due: float,
    deadline: float | None = None,
    tally: Tally | None = None,
) -> Sample:
    """Send request ``i`` (due ``due`` s after ``t0``) and record how it went.

    With ``deadline`` (a ``time.monotonic()`` instant, the end of the run) the request is
    given up there if its own timeout would end later: it then ends as :data:`CUT_OFF`.
    """
    status: int | None = None
    upstream: str | None = None
    error: str | None = None
    budget = target.timeout_s
    left = math.inf if deadline is None else deadline - time.monotonic()
    is_capped = left < budget
    if is_capped:
        budget = left
    if budget <= 0:
        return Sample(due, 0.0, None, CUT_OFF)
    if tally is not None:
        tally.sent += 1
    try:
        async with (
            asyncio.timeout(budget),
            session.post(target.url, data=target.body(i), headers=list(target.headers)) as resp,
        ):
            status = resp.status
            upstream = resp.headers.get(UPSTREAM_HEADER)
            body = await resp.read()
            if status >= 400:
                error = error_kind(status, body)
    except TimeoutError:
        error = CUT_OFF if is_capped else "timeout"
    except aiohttp.ClientConnectorError:
        error = "connection refused"
    except aiohttp.ServerDisconnectedError:
        error = "server disconnected"
    except aiohttp.ClientError as exc:
        error = type(exc).__name__
    sample = Sample(due, time.monotonic() - t0 - due, status, error, upstream)
    return sample if tally is None else tally.record(sample)


async def closed_loop(
    session: aiohttp.ClientSession,
    target: Target,
    *,
    concurrency: int,
    requests: int,
    max_duration_s: float,
    tally: Tally | None = None,
) -> tuple[list[Sample], float]:
    """Keep ``concurrency`` requests in flight until ``requests`` were sent or time is up.

    Returns the samples and the wall time the run took (at most ``max_duration_s``, give or
    take the scheduling of the loop).
    """
    samples: list[Sample] = []
    next_i = 0
    t0 = time.monotonic()
    deadline = t0 + max_duration_s

    async def user() -> None:
        nonlocal next_i
        while next_i < requests and time.monotonic() < deadline:
            i = next_i
            next_i += 1
            due = time.monotonic() - t0
            samples.append(await send(session, target, i, t0, due, deadline, tally))

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, requests)):
            tg.create_task(user())
    return samples, time.monotonic() - t0


async def open_loop(
    session: aiohttp.ClientSession,
    target: Target,
    *,
    rate: float,
    duration_s: float,
    max_in_flight: int,
    arrival: str = "poisson",
    rng: random.Random | None = None,
    max_duration_s: float | None = None,
    tally: Tally | None = None,
) -> tuple[list[Sample], float]:
    """Send at ``rate`` per second for ``duration_s`` (Poisson or evenly spaced arrivals).

    Requests still in flight ``max_duration_s`` after the start (default: their timeout
    after ``duration_s``) are cut off.
    """
    rng = rng or random.Random(0)
    samples: list[Sample] = []
    in_flight = 0
    t0 = time.monotonic()
    deadline = None if max_duration_s is None else t0 + max_duration_s
    duration_s = duration_s if max_duration_s is None else min(duration_s, max_duration_s)

    async def one(i: int, due: float) -> None:
        nonlocal in_flight
        try:
            samples.append(await send(session, target, i, t0, due, deadline, tally))
        finally:
            in_flight -= 1

    async with asyncio.TaskGroup() as tg:
        due = 0.0
        i = 0
        while due < duration_s:
            delay = t0 + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the arrivals is the point of an open loop
            if in_flight >= max_in_flight:
                samples.append(Sample(due, 0.0, None, NOT_SENT))
            else:
                in_flight += 1
                tg.create_task(one(i, due))
            i += 1
            due += rng.expovariate(rate) if arrival == "poisson" else 1.0 / rate
    return samples, time.monotonic() - t0


async def burst(
    session: aiohttp.ClientSession,
    target: Target,
    *,
    n: int,
    max_duration_s: float | None = None,
    tally: Tally | None = None,
) -> tuple[list[Sample], float]:
    """Send ``n`` requests at the same moment and wait for all of them.

    Those still unanswered ``max_duration_s`` after the start are cut off.
    """
    t0 = time.monotonic()
    deadline = None if max_duration_s is None else t0 + max_duration_s
    samples = await asyncio.gather(
        *(send(session, target, i, t0, 0.0, deadline, tally) for i in range(n))
    )
    return list(samples), time.monotonic() - t0
