"""Faults injected through the ``synthetic`` model: overload, disconnects, failures, drain."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any

import aiohttp
import pytest

from gpufleet.testing import ServerProcess, run_worker


def _synthetic(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--model-arg", p)]


async def _stats(s: aiohttp.ClientSession, w: ServerProcess) -> dict[str, Any]:
    async with s.get(w.url + "/stats") as r:
        data: dict[str, Any] = await r.json()
        return data


async def _until(s: aiohttp.ClientSession, w: ServerProcess, key: str, value: int) -> None:
    """Poll /stats (the worker's own account) until ``key`` reaches ``value``."""
    deadline = time.monotonic() + 10
    while (await _stats(s, w))[key] < value:
        assert time.monotonic() < deadline, f"{key} never reached {value}"
        await asyncio.sleep(0.01)


async def test_queue_overflow_is_503_with_retry_after() -> None:
    args = [*_synthetic("base_ms=300"), "--max-batch-size", "1", "--max-queue", "2"]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> tuple[int, str | None, Any]:
                async with s.post(w.url + "/predict", json={"input": i}) as r:
                    return r.status, r.headers.get("Retry-After"), await r.json()

            results = await asyncio.gather(*(one(i) for i in range(8)))
            stats = await _stats(s, w)
    rejected = [r for r in results if r[0] == 503]
    assert rejected, results
    assert all(r[0] in (200, 503) for r in results)
    for _, retry_after, body in rejected:
        assert body["error"] == "WorkerOverloaded"
        assert retry_after is not None
        assert int(retry_after) >= 1
    assert stats["rejected"] == len(rejected)


async def test_more_inputs_than_max_queue_is_413_naming_the_limit() -> None:
    args = [*_synthetic("base_ms=5"), "--max-queue", "2"]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:
            # The queue is empty: a 503 + Retry-After would send the caller back forever.
            async with s.post(w.url + "/predict", json={"inputs": [1, 2, 3]}) as r:
                assert r.status == 413
                assert "Retry-After" not in r.headers
                body = await r.json()
            async with s.post(w.url + "/predict", json={"inputs": [1, 2]}) as r:
                assert r.status == 200
            stats = await _stats(s, w)
    assert body["error"] == "TooManyInputs"
    assert "at most 2" in body["message"]
    assert "--max-queue" in body["message"]
    assert stats["rejected"] == 0
    assert stats["errors"] == 1


async def test_disconnected_caller_never_reaches_predict() -> None:
    # Any batch holding "victim" would raise; errors stay 0 only if it never ran.
    args = [*_synthetic("base_ms=400", "fail_on=victim"), "--max-batch-size", "1"]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:
            first = asyncio.create_task(s.post(w.url + "/predict", json={"input": "a"}))
            await _until(s, w, "batches", 1)  # "a" is on the device now
            short = aiohttp.ClientTimeout(total=0.1)
            with pytest.raises(asyncio.TimeoutError):
                await s.post(w.url + "/predict", json={"input": "victim"}, timeout=short)
            async with await first as r:
                assert r.status == 200
            async with s.post(w.url + "/predict", json={"input": "c"}) as r:
                assert r.status == 200
            stats = await _stats(s, w)
            async with s.get(w.url + "/metrics") as r:
                metrics = await r.text()
    assert stats["failed_items"] == 0
    assert stats["batches"] == 2
    assert stats["dropped"] == 1
    # Counted as the caller's cancel, not as a passed deadline.
    assert 'gpufleet_worker_dropped_items_total{reason="cancelled"} 1.0' in metrics
    assert 'reason="expired"' not in metrics


async def test_failing_predict_is_500_for_its_batch_then_serving_goes_on() -> None:
    args = [*_synthetic("base_ms=5", "fail_on=bad"), "--max-batch-size", "1"]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:
            async with s.post(w.url + "/predict", json={"input": "bad"}) as r:
                assert r.status == 500
                body = await r.json()
                assert body["error"] == "ModelError"
                assert "synthetic failure" in body["message"]
            for i in range(3):
                async with s.post(w.url + "/predict", json={"input": i}) as r:
                    assert r.status == 200
            stats = await _stats(s, w)
    assert stats["errors"] == 1
    assert stats["failed_items"] == 1
    assert stats["served"] == 3


@pytest.mark.parametrize("isolate", [True, False])
async def test_a_bad_input_fails_alone_not_its_batch_mates(isolate: bool) -> None:
    # 8 callers arrive together and form one batch (it leaves when full; max wait 2 s).
    args = [*_synthetic("base_ms=5", "fail_on=bad"), "--max-batch-size", "8"]
    args += ["--max-wait-ms", "2000"] + ([] if isolate else ["--no-isolate-failures"])
    inputs: list[Any] = [0, 1, 2, "bad", 4, 5, 6, 7]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:

            async def one(x: Any) -> tuple[int, Any]:
                async with s.post(w.url + "/predict", json={"input": x}) as r:
                    return r.status, await r.json()

            answers = await asyncio.gather(*(one(x) for x in inputs))
            stats = await _stats(s, w)
    assert stats["batches"] >= 1
    if isolate:
        assert [status for status, _ in answers] == [200, 200, 200, 500, 200, 200, 200, 200]
        assert [body["output"]["echo"] for st, body in answers if st == 200] == [
            0, 1, 2, 4, 5, 6, 7,
        ]  # fmt: skip
        assert "synthetic failure" in answers[3][1]["message"]
        assert stats["failed_items"] == 1
        assert stats["isolation_splits"] >= 1
    else:
        # One batch of 8 (the batcher waited for all): every batch-mate fails with it.
        assert stats["batches"] == 1
        assert [status for status, _ in answers] == [500] * 8
        assert stats["isolation_splits"] == 0


async def test_slow_load_keeps_health_503_until_ready() -> None:
    with run_worker("synthetic", *_synthetic("load_s=1.5"), ready=False) as w:
        seen: list[int] = []
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 20
            while not seen or seen[-1] != 200:
                assert time.monotonic() < deadline
                async with s.get(w.url + "/health") as r:
                    seen.append(r.status)
                    if r.status == 503:
                        assert (await r.json())["status"] == "loading"
                        async with s.post(w.url + "/predict", json={"input": 1}) as p:
                            assert p.status == 503
                await asyncio.sleep(0.05)
            async with s.post(w.url + "/predict", json={"input": 1}) as r:
                assert r.status == 200
    assert seen[0] == 503
    assert set(seen) == {503, 200}


async def test_out_of_memory_splits_the_batch_and_lowers_max_batch() -> None:
    args = [*_synthetic("base_ms=1", "oom_above=4"), "--max-batch-size", "16"]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:
            async with s.post(w.url + "/predict", json={"inputs": list(range(16))}) as r:
                assert r.status == 200
                outs = (await r.json())["outputs"]
            stats = await _stats(s, w)
    assert [o["echo"] for o in outs] == list(range(16))
    assert max(o["batch_size"] for o in outs) <= 4
    assert stats["max_batch_size"] == 4
    assert stats["oom_splits"] >= 1


async def test_sigterm_drains_in_flight_work_and_exits_0() -> None:
    with run_worker("synthetic", *_synthetic("base_ms=800")) as w:
        async with aiohttp.ClientSession() as s:
            pending = asyncio.create_task(s.post(w.url + "/predict", json={"input": "x"}))
            await _until(s, w, "in_flight", 1)
            w.signal(signal.SIGTERM)
            # The signal lands asynchronously: /health turns 503 once the worker has it.
            deadline = time.monotonic() + 5
            while True:
                async with s.get(w.url + "/health") as r:
                    if r.status == 503:
                        break
                assert time.monotonic() < deadline, "/health never turned 503 after SIGTERM"
                await asyncio.sleep(0.01)
            async with s.post(w.url + "/predict", json={"input": "late"}) as r:
                assert r.status == 503
                assert (await r.json())["error"] == "WorkerUnavailable"
            async with await pending as r:
                assert r.status == 200
                assert (await r.json())["output"]["echo"] == "x"
        assert await asyncio.to_thread(w.proc.wait, 10) == 0


async def test_drain_timeout_bounds_a_hung_predict_and_second_signal_exits_at_once() -> None:
    args = [*_synthetic("hang_on=hang"), "--drain-timeout", "0.5"]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:
            hung = asyncio.create_task(s.post(w.url + "/predict", json={"input": "hang"}))
            await _until(s, w, "batches", 1)
            started = time.monotonic()
            w.signal(signal.SIGTERM)
            assert await asyncio.to_thread(w.proc.wait, 10) == 0
            assert time.monotonic() - started < 5
            hung.cancel()
    args = [*_synthetic("hang_on=hang"), "--drain-timeout-s", "60"]  # the older spelling
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:
            hung = asyncio.create_task(s.post(w.url + "/predict", json={"input": "hang"}))
            await _until(s, w, "batches", 1)
            w.signal(signal.SIGTERM)
            # The signal lands asynchronously: wait for the drain to show, then the second.
            deadline = time.monotonic() + 10
            while True:
                async with s.get(w.url + "/health") as r:
                    if r.status == 503:
                        break
                assert time.monotonic() < deadline, "/health never turned 503 after SIGTERM"
                await asyncio.sleep(0.01)
            w.signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(w.proc.wait, 5)
            except subprocess.TimeoutExpired:
                pytest.fail("a second SIGTERM did not exit at once")
            assert code != 0
            hung.cancel()


async def test_a_departed_caller_frees_its_queue_slot_at_once() -> None:
    # Issue 12: the slots of callers who left were held until the batch on the device
    # ended, so a new caller was refused "queue full" for callers long gone.
    args = [*_synthetic("base_ms=2000"), "--max-batch-size", "1", "--max-queue", "2"]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:
            first = asyncio.create_task(s.post(w.url + "/predict", json={"input": "a"}))
            await _until(s, w, "batches", 1)  # "a" holds the device for 2 s
            short = aiohttp.ClientTimeout(total=0.2)

            async def leaves(x: str) -> None:
                with pytest.raises(asyncio.TimeoutError):
                    await s.post(w.url + "/predict", json={"input": x}, timeout=short)

            await asyncio.gather(leaves("b"), leaves("c"))  # the queue was full
            await _until(s, w, "dropped", 2)
            stats = await _stats(s, w)
            assert not first.done(), "the slots were freed only when the batch ended"
            assert (stats["queue_depth"], stats["batches"]) == (0, 1)
            async with s.post(w.url + "/predict", json={"input": "d"}) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["output"]["echo"] == "d"
            async with await first as r:
                assert r.status == 200
            stats = await _stats(s, w)
    assert (stats["rejected"], stats["failed_items"], stats["batches"]) == (0, 0, 2)


async def _health(s: aiohttp.ClientSession, w: ServerProcess) -> tuple[int, dict[str, Any]]:
    async with s.get(w.url + "/health") as r:
        body: dict[str, Any] = await r.json()
        return r.status, body


async def _until_health(
    s: aiohttp.ClientSession, w: ServerProcess, status: int, within: float
) -> dict[str, Any]:
    """Poll /health until it answers ``status``; its body."""
    deadline = time.monotonic() + within
    while True:
        got, body = await _health(s, w)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/health still {got} {body} after {within}s"
        await asyncio.sleep(0.05)


async def test_a_hung_device_turns_health_503_stalled_until_the_batch_ends() -> None:
    # Issue 12: a predict that never returns left /health at 200 (the loop was fine).
    args = [*_synthetic("base_ms=5", "hang_on=HANG", "hang_s=4"), "--max-batch-size", "1"]
    with run_worker("synthetic", *args, "--stall-timeout", "2") as w:
        async with aiohttp.ClientSession() as s:

            async def one(x: str) -> tuple[int, Any]:
                async with s.post(w.url + "/predict", json={"input": x}) as r:
                    return r.status, await r.json()

            hung = asyncio.create_task(one("HANG"))
            await _until(s, w, "batches", 1)
            began = time.monotonic()
            queued = [asyncio.create_task(one(f"q{i}")) for i in range(3)]
            await _until(s, w, "queue_depth", 3)
            assert (await _health(s, w))[0] == 200  # busy is not stalled
            body = await _until_health(s, w, 503, within=4)
            took = time.monotonic() - began
            assert took <= 4.0, took  # the stall timeout (2 s) and a little
            assert body["status"] == "stalled"
            assert body["reason"].startswith("device thread has not finished a batch in 2.")
            assert body["reason"].endswith("(3 items waiting)")
            stats = await _stats(s, w)
            assert stats["state"] == "stalled"
            assert stats["stall_reason"].startswith("device thread has not finished a batch")
            assert (stats["stalls"], stats["stall_timeout_s"]) == (1, 2.0)
            async with s.get(w.url + "/metrics") as r:
                metrics = await r.text()
            assert "gpufleet_worker_stalled 1.0" in metrics
            assert "gpufleet_worker_stalls_total 1.0" in metrics
            # New work is refused while stalled: it would queue behind a batch that may
            # never end (a router sends it elsewhere).
            status, refused = await one("late")
            assert status == 503
            assert refused["error"] == "WorkerUnavailable"
            assert "stalled" in refused["message"]

            await _until_health(s, w, 200, within=6)  # the hang (4 s) ended
            assert (await hung)[0] == 200
            assert [(await q)[0] for q in queued] == [200, 200, 200]
            stats = await _stats(s, w)
            async with s.get(w.url + "/metrics") as r:
                metrics = await r.text()
    assert (stats["state"], stats["stall_reason"], stats["stalls"]) == ("ready", None, 1)
    assert "gpufleet_worker_stalled 0.0" in metrics
    warnings = [line for line in w.log().splitlines() if "WARNING" in line and "stalled" in line]
    assert len(warnings) == 1, warnings  # once when it turned stalled, not at every probe
    assert "no longer stalled" in w.log()


async def test_a_stream_step_that_never_returns_is_a_stall_too() -> None:
    args = [*_synthetic("per_item_ms=5", "hang_on=HANG", "hang_s=2.5"), "--stall-timeout", "1"]
    with run_worker("synthetic", *args) as w:
        async with aiohttp.ClientSession() as s:

            async def stream() -> str:
                body = {"input": "HANG", "stream": True}
                async with s.post(w.url + "/predict", json=body) as r:
                    assert r.status == 200
                    return await r.text()

            task = asyncio.create_task(stream())
            await _until(s, w, "streams", 1)
            body = await _until_health(s, w, 503, within=3)
            assert body["status"] == "stalled"
            assert body["reason"].endswith("(0 items waiting)")
            await _until_health(s, w, 200, within=5)
            text = await task
    assert text.endswith("data: [DONE]\n\n")
    assert text.count('"echo":"HANG"') == 4
