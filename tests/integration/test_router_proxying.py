"""What the router does to a request on its way: limits, retries, headers, no hanging."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from multidict import CIMultiDict

from gpufleet.testing import run_router, run_worker
from gpufleet.testing.upstreams import drive, run_upstream
from tests.integration._router import get_json, wait_for, wait_state


async def _post(url: str, **kwargs: Any) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(url, **kwargs) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def test_oversized_bodies_get_413_and_never_reach_the_upstream() -> None:
    with run_upstream() as upstream, run_router([upstream.url], "--max-body-mb", "1") as router:
        big = io.BytesIO(b"x" * (1024 * 1024 + 1))
        status, _, body = await _post(router.url + "/echo", data=big)
        assert status == 413, body
        assert b"PayloadTooLarge" in body

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"y" * 65536  # 2.5 MiB in all, no Content-Length

        status, _, body = await _post(router.url + "/echo", data=chunks())
        assert status == 413, body
        # Just under the limit passes, both ways.
        status, _, body = await _post(router.url + "/echo", data=io.BytesIO(b"z" * 1024 * 1024))
        assert status == 200, body

        async def small_chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"w" * 1000

        status, _, body = await _post(router.url + "/echo", data=small_chunks())
        assert status == 200, body
        seen = await get_json(upstream.url + "/stats")
        assert seen["requests"] == 2
        assert seen["bytes_received"] == 1024 * 1024 + 4000


async def test_all_upstreams_down_answers_503_with_retry_after_at_once() -> None:
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream()) for _ in range(2)]
        router = stack.enter_context(
            run_router([u.url for u in ups], "--health-interval", "0.2", "--timeout", "30")
        )
        for u in ups:
            await wait_state(router.url, u.url, "ready", within=10)
            u.kill()

        async def refused_at_once() -> None:
            started = time.monotonic()
            status, headers, body = await _post(router.url + "/echo", json={})
            took = time.monotonic() - started
            assert status == 503, body
            assert int(headers["Retry-After"]) >= 1
            assert took < 0.5, took

        async def all_ejected() -> bool:
            stats = await get_json(router.url + "/stats")
            return {w["state"] for w in stats["workers"]} == {"ejected"}

        await refused_at_once()  # right after the kill: the attempts are refused
        await wait_for(all_ejected, within=10, what="both upstreams ejected")
        await refused_at_once()  # and once they are ejected
        async with (
            aiohttp.ClientSession() as session,
            session.get(router.url + "/health") as resp,
        ):
            assert resp.status == 503


async def test_connection_refused_is_retried_on_another_upstream() -> None:
    with contextlib.ExitStack() as stack:
        ups = [stack.enter_context(run_upstream()) for _ in range(3)]
        # Probes far apart: only the proxy's own attempts find the dead one.
        router = stack.enter_context(
            run_router(
                [u.url for u in ups],
                "--policy",
                "round-robin",
                "--health-interval",
                "60",
                "--max-fails",
                "100",
            )
        )
        for u in ups:
            await wait_state(router.url, u.url, "ready", within=10)
        ups[0].kill()
        results = await drive(router.url + "/echo", 30, 3)
        assert {status for status, _, _ in results} == {200}
        assert {up for _, up, _ in results} == {"w1", "w2"}
        stats = await get_json(router.url + "/stats")
        dead = stats["workers"][0]
        assert dead["state"] == "ready"  # still in rotation: every refusal was retried
        assert dead["served"] == 0
        # Each refused attempt counted against it and was retried elsewhere.
        assert dead["errors"] == stats["totals"]["retries"] >= 3
        assert stats["totals"]["in_flight"] == 0


async def test_a_500_is_not_retried_but_a_workers_full_queue_is() -> None:
    with contextlib.ExitStack() as stack:
        plain = [stack.enter_context(run_upstream()) for _ in range(2)]
        router = stack.enter_context(run_router([u.url for u in plain], "--max-fails", "100"))
        for u in plain:
            await wait_state(router.url, u.url, "ready", within=10)
        status, _, _ = await _post(router.url + "/status/500", json={})
        assert status == 500
        # A 503 from a server that is not a gpufleet worker may have run: not retried either.
        status, _, _ = await _post(router.url + "/overloaded", json={})
        assert status == 503
        seen = [await get_json(u.url + "/stats") for u in plain]
        assert sum(s["requests"] for s in seen) == 2
        assert (await get_json(router.url + "/stats"))["totals"]["retries"] == 0

    # Real workers: one with a full queue answers 503 WorkerOverloaded; the router retries
    # those requests on the other, and every caller gets its answer.
    hang = ("--model-arg", "hang_on=hang", "--model-arg", "hang_s=8")
    with (
        run_worker("synthetic", *hang, "--max-batch-size", "1", "--max-queue", "1") as full,
        run_worker("synthetic", "--model-arg", "base_ms=5") as free,
        run_router(
            [full.url, free.url], "--policy", "round-robin", "--max-outstanding", "4"
        ) as router,
    ):
        for w in (full, free):
            await wait_state(router.url, w.url, "ready", within=10)
        # Fill the first worker straight: one hanging in predict, then one in its queue
        # (one after the other: two at once could both find the queue and one be refused).
        async with aiohttp.ClientSession() as session:
            fillers: list[asyncio.Task[Any]] = []
            for field in ("batches", "queue_depth"):
                fillers.append(
                    asyncio.create_task(session.post(full.url + "/predict", json={"input": "hang"}))
                )

                async def has(field: str = field) -> bool:
                    return bool((await get_json(full.url + "/stats"))[field] >= 1)

                await wait_for(has, within=10, what=f"the first worker's {field} >= 1")
            status, _, body = await _post(full.url + "/predict", json={"input": "x"})
            assert status == 503, body
            assert b"WorkerOverloaded" in body
            results = await drive(router.url + "/predict", 20, 2)
            for task in fillers:
                task.cancel()
            await asyncio.gather(*fillers, return_exceptions=True)
        assert {status for status, _, _ in results} == {200}
        assert {up for _, up, _ in results} == {"w1"}
        stats = await get_json(router.url + "/stats")
        full_entry = stats["workers"][0]
        # After a refusal the router sends it nothing more until its Retry-After (1 s) is
        # over or one of its requests ends: a refusal or two, not every other request.
        assert 1 <= stats["totals"]["retries"] <= 3
        assert set(stats["totals"]["retries_by_reason"]) == {"refused"}
        assert full_entry["state"] == "ready"  # a full queue is not a failure
        assert (full_entry["errors"], full_entry["served"]) == (0, 0)
        # Every retry was one 503 of the full worker (plus the one asked straight above).
        rejected = (await get_json(full.url + "/stats"))["rejected"]
        assert rejected == stats["totals"]["retries"] + 1


async def test_request_id_forwarded_for_and_hop_by_hop_headers() -> None:
    with run_upstream() as upstream, run_router([upstream.url]) as router:
        status, headers, body = await _post(
            router.url + "/echo/x?a=1&b=2",
            json={"k": "v"},
            headers={
                "X-Request-Id": "abc-123",
                "X-Forwarded-For": "10.0.0.9",
                "Connection": "keep-alive, X-Private",
                "X-Private": "secret",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "TE": "trailers",
                "X-Kept": "yes",
            },
        )
        assert status == 200, body
        seen: dict[str, Any] = json.loads(body)
        got = {k.lower(): v for k, v in seen["headers"].items()}
        assert headers["X-Request-Id"] == "abc-123"
        assert got["x-request-id"] == "abc-123"
        assert got["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
        assert got["x-kept"] == "yes"
        for dropped in ("x-private", "keep-alive", "proxy-authorization", "te"):
            assert dropped not in got, dropped
        assert (seen["path"], seen["query"]) == ("/echo/x", "a=1&b=2")
        assert headers["X-Gpufleet-Upstream"] == "w0"

        # No id given: one is minted, passed up, and returned; each request gets its own.
        ids = set()
        for _ in range(3):
            status, headers, body = await _post(router.url + "/echo", json={})
            seen = json.loads(body)
            minted = headers["X-Request-Id"]
            assert minted
            assert {k.lower(): v for k, v in seen["headers"].items()}["x-request-id"] == minted
            got = {k.lower(): v for k, v in seen["headers"].items()}
            assert got["x-forwarded-for"] == "127.0.0.1"
            ids.add(minted)
        assert len(ids) == 3
        # Errors the router answers itself carry the id too.
        status, headers, body = await _post(
            router.url + "/echo",
            data=io.BytesIO(b"x" * (33 * 1024 * 1024)),
            headers={"X-Request-Id": "big"},
        )
        assert status == 413
        assert headers["X-Request-Id"] == "big"


async def test_cap_is_two_batches_of_a_gpufleet_worker_else_four() -> None:
    with (
        run_upstream("--gpufleet", "--max-batch-size", "3") as worker_like,
        run_upstream() as plain,
        run_router([worker_like.url, plain.url]) as router,
    ):
        for u in (worker_like, plain):
            await wait_state(router.url, u.url, "ready", within=10)
        stats = await get_json(router.url + "/stats")
        caps = {w["url"]: (w["max_outstanding"], w["gpufleet_worker"]) for w in stats["workers"]}
        assert caps == {worker_like.url: (6, True), plain.url: (4, False)}
        # Ten slow requests at once fill both caps exactly: six on the worker, four on the other.
        calls = [
            asyncio.create_task(_post(router.url + "/slow?ms=2500", json={})) for _ in range(10)
        ]
        seen: dict[str, Any] = {}

        async def all_arrived() -> bool:  # each one running upstream or queued
            seen.update(await get_json(router.url + "/stats"))
            running = sum(w["in_flight"] for w in seen["workers"])
            return bool(running + seen["totals"]["queue_depth"] == 10)

        await wait_for(all_arrived, within=2, what="the ten requests at the router")
        assert [w["in_flight"] for w in seen["workers"]] == [6, 4]
        assert seen["totals"]["queue_depth"] == 0
        results = await asyncio.gather(*calls)
        assert {status for status, _, _ in results} == {200}
