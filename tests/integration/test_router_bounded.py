"""The router bounded in time (issue 12): wedged and frozen upstreams, slow readers, and
head-of-line blocking, with real worker, upstream and router processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from typing import Any

import aiohttp

from gpufleet.testing import ServerProcess, run_router, run_worker
from gpufleet.testing.upstreams import run_upstream
from tests.integration._router import get_json, wait_for, wait_state

FAST = ("--model-arg", "base_ms=5", "--model-arg", "per_item_ms=1")
HANG = ("--model-arg", "hang_on=HANG", "--model-arg", "hang_s=30")


async def _post(
    session: aiohttp.ClientSession, url: str, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes, float]:
    started = time.monotonic()
    async with session.post(url, json=data, headers=headers) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), body, time.monotonic() - started


async def _warm_up(session: aiohttp.ClientSession, router: ServerProcess) -> None:
    """Steady traffic before the fault: the retry budget is a share of recent requests."""
    for _ in range(4):
        results = await asyncio.gather(
            *(_post(session, router.url + "/predict", {"input": "w"}) for _ in range(16))
        )
        assert {r[0] for r in results} == {200}


async def _ready(router: ServerProcess, *workers: ServerProcess) -> None:
    for w in workers:
        await wait_state(router.url, w.url, "ready", within=20)


async def test_a_wedged_worker_is_routed_around_within_the_first_byte_timeout() -> None:
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(run_worker("synthetic", *FAST, *HANG)) for _ in range(2)]
        router = stack.enter_context(
            run_router(
                [w.url for w in workers],
                "--first-byte-timeout",
                "1",
                "--policy",
                "round-robin",
            )
        )
        await _ready(router, *workers)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await _warm_up(session, router)
            wedge = asyncio.create_task(_post(session, router.url + "/predict", {"input": "HANG"}))
            await asyncio.sleep(0.05)  # let it land first: it wedges the device it reaches
            shorts = await asyncio.gather(
                *(_post(session, router.url + "/predict", {"input": f"s{i}"}) for i in range(30))
            )
            status, headers, body, took = await wedge
        # The request that wedged the device is answered at its first-byte timeout,
        # naming the upstream, and not re-run elsewhere (it would wedge that one too).
        assert status == 504, body
        assert b"no answer from upstream w" in body, body
        assert b"within 1s" in body, body
        assert headers["X-Gpufleet-Attempts"] == "1"
        assert 0.9 < took < 3.0, took
        wedged_id = next(
            w["id"]
            for w in (await get_json(router.url + "/stats"))["workers"]
            if w["id"].encode() in body
        )
        # The requests caught behind it were moved to the other worker within ~1 s.
        assert {s for s, _, _, _ in shorts} == {200}, shorts
        assert max(t for _, _, _, t in shorts) < 2.5, sorted(t for _, _, _, t in shorts)
        moved = [h for _, h, _, _ in shorts if h["X-Gpufleet-Attempts"] == "2"]
        assert all(h["X-Gpufleet-Upstream"] != wedged_id for _, h, _, _ in shorts)
        stats = await get_json(router.url + "/stats")
        assert stats["totals"]["retries_by_reason"].get("timeout", 0) == len(moved)
        entry = next(w for w in stats["workers"] if w["id"] == wedged_id)
        assert entry["suspect"] is True  # no new work until it answers again
        print(f"{len(moved)} of 30 moved; slowest short {max(t for *_, t in shorts):.2f}s")


async def test_a_frozen_worker_gets_its_requests_taken_back() -> None:
    slow = ("--model-arg", "base_ms=400", "--max-batch-size", "4")
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(run_worker("synthetic", *slow)) for _ in range(2)]
        router = stack.enter_context(
            run_router(
                [w.url for w in workers],
                "--first-byte-timeout",
                "20",
                "--health-interval",
                "0.2",
                "--health-timeout",
                "0.5",
            )
        )
        await _ready(router, *workers)
        victim = workers[0]
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await _warm_up(session, router)
            calls = [
                asyncio.create_task(_post(session, router.url + "/predict", {"input": i}))
                for i in range(8)
            ]

            async def both_busy() -> bool:
                stats = await get_json(router.url + "/stats")
                return all(w["in_flight"] >= 2 for w in stats["workers"])

            await wait_for(both_busy, within=10, what="requests on both workers")
            os.kill(victim.proc.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                results = await asyncio.gather(*calls)
                took = time.monotonic() - stopped
            finally:
                os.kill(victim.proc.pid, signal.SIGCONT)
        # Ejected by its probes within ~1.5 s; the requests waiting on it went elsewhere.
        assert {s for s, _, _, _ in results} == {200}, results
        assert took < 6.0, took
        stats = await get_json(router.url + "/stats")
        entry = next(w for w in stats["workers"] if w["url"] == victim.url)
        assert entry["ejections"] >= 1
        assert stats["totals"]["retries_by_reason"].get("lost", 0) >= 1
        assert stats["totals"]["in_flight"] == 0


async def test_stalled_readers_lose_their_slot_not_the_fleets() -> None:
    with (
        run_upstream() as upstream,
        run_router(
            [upstream.url], "--client-write-timeout", "1.5", "--max-outstanding", "4"
        ) as router,
    ):
        await _ready(router, upstream)
        port = router.port
        readers: list[socket.socket] = []
        try:
            for _ in range(4):  # the cap
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /big?mb=64 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                readers.append(sock)  # never read

            async def all_slots_taken() -> bool:
                return bool((await get_json(router.url + "/stats"))["totals"]["in_flight"] == 4)

            await wait_for(all_slots_taken, within=10, what="4 stalled readers in flight")
            started = time.monotonic()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
                status, _, _, _ = await _post(session, router.url + "/echo", {"x": 1})
            took = time.monotonic() - started
            assert status == 200
            # Freed by the write timeout (1.5 s, checked every 0.375 s), not after 30 s.
            assert took < 4.0, took

            async def dropped() -> bool:
                stats = await get_json(router.url + "/stats")
                return bool(stats["totals"]["clients_stalled"] == 4)

            await wait_for(dropped, within=10, what="the 4 stalled readers dropped")
            stats = await get_json(router.url + "/stats")
            assert stats["totals"]["in_flight"] == 0
            # The upstream saw each of them go (its writes were cancelled).
            assert (await get_json(upstream.url + "/stats"))["cancelled"] == 4
        finally:
            for sock in readers:
                sock.close()


async def test_a_long_request_does_not_hold_up_short_ones() -> None:
    long_ = ("--model-arg", "hang_on=LONG", "--model-arg", "hang_s=10")
    base = ("--model-arg", "base_ms=20", "--model-arg", "per_item_ms=0")
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(run_worker("synthetic", *base, *long_)) for _ in range(2)]
        router = stack.enter_context(run_router([w.url for w in workers]))
        await _ready(router, *workers)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # The router learns both workers' first-byte times (p99 ~20-40 ms).
            await _warm_up(session, router)
            # The caller of the long one says so; it keeps its attempt for 30 s.
            long_call = asyncio.create_task(
                _post(
                    session,
                    router.url + "/predict",
                    {"input": "LONG"},
                    {"X-Gpufleet-First-Byte-Timeout": "30"},
                )
            )
            await asyncio.sleep(0.05)
            short: list[float] = []

            async def caller() -> None:
                while not long_call.done():
                    status, _, _, took = await _post(session, router.url + "/predict", {"input": 1})
                    assert status == 200
                    short.append(took)

            await asyncio.gather(*(caller() for _ in range(4)))
            status, _, body, took = await long_call
        assert status == 200, body
        assert 9.5 < took < 15, took
        short.sort()
        p99 = short[int(0.99 * (len(short) - 1))]
        print(f"{len(short)} short requests: p50 {short[len(short) // 2]:.3f}s p99 {p99:.3f}s")
        assert len(short) > 100
        assert short[-1] < 2.0, short[-5:]


async def test_a_callers_own_short_first_byte_timeout_holds_nothing_against_upstreams() -> None:
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream()) for _ in range(2)]
        router = stack.enter_context(run_router([u.url for u in ups]))
        await _ready(router, *ups)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for _ in range(6):
                status, headers, body, _ = await _post(
                    session,
                    router.url + "/slow?ms=200",
                    {},
                    {"X-Gpufleet-First-Byte-Timeout": "0.01"},
                )
                assert status == 504, body  # the caller's bound, answered
                assert headers["X-Gpufleet-Attempts"] == "1"
            status, _, _, _ = await _post(session, router.url + "/echo", {})
            assert status == 200
        for w in (await get_json(router.url + "/stats"))["workers"]:
            # Nothing charged to the upstreams: no failure, no ejection, not suspect.
            assert (w["state"], w["errors"], w["suspect"]) == ("ready", 0, False), w
