"""The Batch API with the official ``openai`` client against a router in front of real workers.

Upload, create, poll, download, list, cancel; a bad line refused with its number; a router
``kill -9``-ed mid-batch and started again on the same store finishes the batch with one
output line per ``custom_id``, having sent again at most what was in flight (counted at the
workers), on either store (a SQLite folder; a PostgreSQL database on a real server the
test starts). Interactive requests go before queued batch ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types import Batch

from gpufleet.batches.runner import LOOK_EVERY_S
from gpufleet.testing import ServerProcess, run_router, run_worker
from tests._postgres import new_database, running_postgres
from tests.integration._openai import openai_client
from tests.integration._router import get_json

FINAL = ("completed", "failed", "expired", "cancelled")


def _client(router: ServerProcess) -> openai.OpenAI:
    return openai_client(router.url + "/v1")


def _jsonl(n: int, url: str = "/predict", start: int = 0) -> bytes:
    lines = [
        json.dumps(
            {"custom_id": f"req-{i}", "method": "POST", "url": url, "body": {"input": f"in-{i}"}}
        )
        for i in range(start, start + n)
    ]
    return ("\n".join(lines) + "\n").encode()


def _wait(
    client: openai.OpenAI, batch_id: str, done: Any, *, within: float, what: str = ""
) -> Batch:
    """Poll the batch until ``done(batch)``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} not {what} after {within}s: {batch}")
        time.sleep(0.05)


def _output(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines()]


@contextlib.contextmanager
def _workers(n: int, *args: str) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_worker("synthetic", *args)) for _ in range(n)]


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.text()


def _served(urls: list[str]) -> int:
    """Requests the workers at ``urls`` served (their own count)."""
    total = 0
    for url in urls:
        stats = asyncio.run(get_json(url + "/stats"))
        total += int(stats["served"])
    return total


def test_upload_create_poll_download_list(tmp_path: Path) -> None:
    with (
        _workers(2) as workers,
        run_router([w.url for w in workers], "--batch-store", str(tmp_path / "store")) as router,
    ):
        client = _client(router)
        data = _jsonl(200)
        uploaded = client.files.create(file=("prompts.jsonl", data), purpose="batch")
        assert uploaded.purpose == "batch"
        assert uploaded.bytes == len(data)
        assert uploaded.filename == "prompts.jsonl"
        assert client.files.retrieve(uploaded.id).id == uploaded.id
        assert client.files.content(uploaded.id).content == data

        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/predict",  # type: ignore[arg-type]
            completion_window="24h",
            metadata={"job": "test"},
        )
        assert batch.status in ("validating", "in_progress")
        assert batch.metadata == {"job": "test"}
        done = _wait(client, batch.id, lambda b: b.status in FINAL, within=60, what="done")
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (200, 200)
        assert done.request_counts.failed == 0
        assert done.error_file_id is None
        assert done.completed_at is not None
        assert done.in_progress_at is not None
        lines = _output(client, done.output_file_id)
        assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(200)]
        for i, line in enumerate(lines):
            assert line["error"] is None
            assert line["id"].startswith("batch_req_")
            assert line["response"]["status_code"] == 200
            assert line["response"]["body"]["output"]["echo"] == f"in-{i}"
        # Both workers took part, and the router shows what it ran.
        pids = {line["response"]["body"]["output"]["pid"] for line in lines}
        assert len(pids) == 2
        stats = asyncio.run(get_json(router.url + "/stats"))
        assert stats["pools"]["default"]["classes"]["batch"]["admitted"] >= 200
        assert stats["batches"]["in_progress"] == 0

        # Paged listing, newest first, as the client pages it.
        second = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/predict",  # type: ignore[arg-type]
            completion_window="24h",
        )
        page = client.batches.list(limit=1)
        assert [b.id for b in page.data] == [second.id]
        assert page.has_more
        assert [b.id for b in client.batches.list(limit=1)] == [second.id, batch.id]
        _wait(client, second.id, lambda b: b.status == "completed", within=60, what="done")
        # Counters: batches by status and requests by outcome, in /stats and /metrics (the
        # counts are read again just after a batch's final state is stored).
        deadline = time.monotonic() + 10
        while True:
            stats = asyncio.run(get_json(router.url + "/stats"))
            if stats["batches"]["by_status"] == {"completed": 2}:
                break
            assert time.monotonic() < deadline, stats["batches"]
            time.sleep(0.05)
        assert stats["batches"]["requests"] == {"completed": 400, "failed": 0}
        metrics = asyncio.run(_text(router.url + "/metrics"))
        assert 'gpufleet_batches{status="completed"} 2.0' in metrics
        assert 'gpufleet_batches{status="in_progress"} 0.0' in metrics
        assert 'gpufleet_batch_requests_total{outcome="completed"} 400.0' in metrics
        assert 'gpufleet_batch_requests_total{outcome="failed"} 0.0' in metrics

        out = client.files.retrieve(done.output_file_id or "")
        assert out.purpose == "batch_output"
        deleted = client.files.delete(uploaded.id)
        assert deleted.deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(uploaded.id)


def test_bad_lines_and_calls_are_refused(tmp_path: Path) -> None:
    with (
        _workers(1) as workers,
        run_router([w.url for w in workers], "--batch-store", str(tmp_path / "store")) as router,
    ):
        client = _client(router)
        bad = _jsonl(2) + b'{"custom_id": "x", "method": "POST", "url": "/predict"}\n'
        with pytest.raises(openai.BadRequestError, match="line 3") as info:
            client.files.create(file=("bad.jsonl", bad), purpose="batch")
        assert info.value.body["line"] == 3  # type: ignore[index]
        dup = _jsonl(3) + _jsonl(1)
        with pytest.raises(openai.BadRequestError, match="line 4: custom_id 'req-0'"):
            client.files.create(file=("dup.jsonl", dup), purpose="batch")
        assert client.files.list().data == []  # nothing kept of a refused upload

        mixed = _jsonl(2) + _jsonl(1, url="/v1/embeddings", start=2)
        uploaded = client.files.create(file=("mixed.jsonl", mixed), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="line 3: url '/v1/embeddings'"):
            client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/predict",  # type: ignore[arg-type]
                completion_window="24h",
            )
        with pytest.raises(openai.BadRequestError, match="completion_window"):
            client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/predict",  # type: ignore[arg-type]
                completion_window="forever",  # type: ignore[arg-type]
            )
        with pytest.raises(openai.NotFoundError):
            client.batches.create(
                input_file_id="file-nope",
                endpoint="/predict",  # type: ignore[arg-type]
                completion_window="24h",
            )
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")

        async def raw() -> list[tuple[int, str | None]]:
            async with aiohttp.ClientSession() as s:
                out = []
                for method, path in (("PUT", "/v1/files"), ("GET", "/v1/batches/x/y/z")):
                    async with s.request(method, router.url + path) as resp:
                        out.append((resp.status, resp.headers.get("Allow")))
                return out

        # The Batch API's paths are the router's own: never proxied to a worker.
        assert asyncio.run(raw()) == [(405, "GET, POST"), (404, None)]


def test_cancel_keeps_what_finished(tmp_path: Path) -> None:
    slow = ("--model-arg", "base_ms=100", "--model-arg", "per_item_ms=0")
    with (
        _workers(1, *slow, "--max-batch-size", "2") as workers,
        run_router([w.url for w in workers], "--batch-store", str(tmp_path / "store")) as router,
    ):
        client = _client(router)
        uploaded = client.files.create(file=("in.jsonl", _jsonl(300)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/predict",  # type: ignore[arg-type]
            completion_window="24h",
        )
        _wait(
            client,
            batch.id,
            lambda b: b.request_counts.completed >= 10,
            within=30,
            what="10 completed",
        )
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled")
        done = _wait(client, batch.id, lambda b: b.status in FINAL, within=30, what="cancelled")
        assert done.status == "cancelled"
        assert done.cancelled_at is not None
        assert done.request_counts is not None
        lines = _output(client, done.output_file_id)
        assert len(lines) == done.request_counts.completed
        assert 10 <= len(lines) < 300
        assert len({line["custom_id"] for line in lines}) == len(lines)
        # A finished batch cannot be cancelled again into anything else.
        assert client.batches.cancel(batch.id).status == "cancelled"


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a router keeps its batches: a folder, or a PostgreSQL database URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "store")
        return
    with running_postgres() as url:
        yield new_database(url, "batches")


def test_kill9_mid_batch_then_restart_finishes_exactly_once(store_at: str) -> None:
    store = store_at
    n = 600
    with _workers(2, "--model-arg", "base_ms=50") as workers:
        urls = [w.url for w in workers]
        with run_router(urls, "--batch-store", store) as router:
            client = _client(router)
            uploaded = client.files.create(file=("in.jsonl", _jsonl(n)), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/predict",  # type: ignore[arg-type]
                completion_window="24h",
            )
            _wait(
                client,
                batch.id,
                lambda b: b.request_counts.completed >= 100,
                within=60,
                what="100 completed",
            )
            stats = asyncio.run(get_json(router.url + "/stats"))
            window = stats["batches"]["windows"]["default"]["limit"]
            router.kill()
        with run_router(urls, "--batch-store", store) as again:
            client = _client(again)
            done = _wait(client, batch.id, lambda b: b.status in FINAL, within=60, what="done")
            assert done.status == "completed"
            assert done.request_counts is not None
            assert done.request_counts.completed == n
            lines = _output(client, done.output_file_id)
            ids = [line["custom_id"] for line in lines]
            assert ids == [f"req-{i}" for i in range(n)]
            assert all(line["response"]["status_code"] == 200 for line in lines)
            assert "resuming 1 unfinished batch" in again.log()
        # Sent twice: at most what was in flight (the window) when the router died.
        extra = _served(urls) - n
        assert 0 <= extra <= window, (extra, window)


@pytest.mark.parametrize("store_at", ["postgres"], indirect=True)
def test_routers_sharing_a_store_run_a_batch_once_and_take_over_from_a_killed_one(
    store_at: str,
) -> None:
    # Two routers on one PostgreSQL store (a fleet of machines), each in front of workers
    # of its own, so each worker's count says which router sent what.
    n = 600
    # A's workers are slow (20 requests/s each), so the batch still runs through B's first
    # look; B's is fast, so B finishes the rest at once.
    slow = ("--model-arg", "base_ms=100", "--max-batch-size", "2")
    with _workers(2, *slow) as mine, _workers(1, "--model-arg", "base_ms=5") as theirs:
        a_urls, b_urls = [w.url for w in mine], [w.url for w in theirs]
        with run_router(a_urls, "--batch-store", store_at) as a:
            client = _client(a)
            uploaded = client.files.create(file=("in.jsonl", _jsonl(n)), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/predict",  # type: ignore[arg-type]
                completion_window="24h",
            )
            _wait(client, batch.id, lambda x: x.request_counts.completed > 0, within=30)
            with run_router(b_urls, "--batch-store", store_at) as b:
                # B tried to resume the batch as it started, and tries again at each look:
                # through its first look it sends nothing of the batch A holds.
                b_looked = time.monotonic() + 1.5 * LOOK_EVERY_S
                while time.monotonic() < b_looked:
                    assert _served(b_urls) == 0, "the second router ran a batch A holds"
                    time.sleep(0.2)
                progress = client.batches.retrieve(batch.id).request_counts
                assert progress is not None
                assert progress.completed < n, "make the batch longer: it must still run"
                stats = asyncio.run(get_json(a.url + "/stats"))
                window = stats["batches"]["windows"]["default"]["limit"]
                a.kill()  # kill -9: its claim ends with it; B takes the batch at a look
                client = _client(b)
                done = _wait(
                    client, batch.id, lambda x: x.status in FINAL, within=90, what="taken over"
                )
                assert done.status == "completed"
                assert done.request_counts is not None
                assert done.request_counts.completed == n
                ids = [line["custom_id"] for line in _output(client, done.output_file_id)]
                assert ids == [f"req-{i}" for i in range(n)]
                assert _served(b_urls) > 0
        # Sent twice: at most what was in flight on A when it died.
        extra = _served(a_urls) + _served(b_urls) - n
        assert 0 <= extra <= window, (extra, window)


async def test_interactive_requests_go_before_queued_batch_ones() -> None:
    slow = ("--model-arg", "base_ms=200", "--model-arg", "per_item_ms=0")
    with (
        run_worker("synthetic", *slow, "--max-batch-size", "1") as worker,
        run_router([worker.url], "--max-outstanding", "1") as router,
    ):
        done: list[tuple[str, float]] = []
        t0 = time.monotonic()

        async def send(session: aiohttp.ClientSession, kind: str, i: int) -> None:
            headers = {"X-Gpufleet-Priority": kind}
            body = {"input": f"{kind}-{i}"}
            async with session.post(router.url + "/predict", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                await r.read()
            done.append((f"{kind}-{i}", time.monotonic() - t0))

        async with aiohttp.ClientSession() as session:
            batch = [asyncio.create_task(send(session, "batch", i)) for i in range(5)]

            async def queued() -> bool:
                stats = await get_json(router.url + "/stats")
                return bool(stats["pools"]["default"]["classes"]["batch"]["queue_depth"] == 4)

            deadline = time.monotonic() + 10
            while not await queued():
                assert time.monotonic() < deadline, "batch requests never queued"
                await asyncio.sleep(0.01)
            await send(session, "interactive", 0)
            await asyncio.gather(*batch)
            metrics = await (await session.get(router.url + "/metrics")).text()
        order = [name for name, _ in done]
        # One batch request held the only slot; the interactive one came after the four
        # queued batch requests and still went next.
        assert order.index("interactive-0") == 1, order
        stats = await get_json(router.url + "/stats")
        classes = stats["pools"]["default"]["classes"]
        assert classes["batch"]["admitted"] == 5
        assert classes["interactive"]["admitted"] == 1
        assert classes["batch"]["wait_p99_ms"] > classes["interactive"]["wait_p99_ms"]
        assert 'gpufleet_router_class_queue_depth{pool="default",priority="batch"}' in metrics


def test_limits_and_retention(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    limits = ["--batch-max-lines", "50", "--batch-max-file-mb", "0.01"]
    limits += ["--batch-max-store-gb", str(24_000 / 2**30)]
    with _workers(1) as workers:
        urls = [w.url for w in workers]
        with run_router(urls, "--batch-store", store, *limits) as router:
            client = _client(router)
            with pytest.raises(openai.BadRequestError, match="line 51: more than 50 requests"):
                client.files.create(file=("many.jsonl", _jsonl(60)), purpose="batch")
            big = _jsonl(40) + b" " * 11_000
            with pytest.raises(openai.APIStatusError, match=r"larger than 0\.01 MB") as info:
                client.files.create(file=("big.jsonl", big), purpose="batch")
            assert info.value.status_code == 413
            stored = 0
            refused: openai.APIStatusError | None = None
            for i in range(10):
                try:
                    stored += client.files.create(
                        file=(f"{i}.jsonl", _jsonl(40)), purpose="batch"
                    ).bytes
                except openai.APIStatusError as exc:
                    refused = exc
                    break
            assert refused is not None
            assert refused.status_code == 413
            assert "store is full" in refused.message
            assert stored > 20_000
        # Started again with a retention of 2 s, the same store drops its old files and has
        # room again.
        with run_router(
            urls, "--batch-store", store, *limits, "--batch-retention-h", str(2 / 3600)
        ) as again:
            client = _client(again)
            deadline = time.monotonic() + 20
            while client.files.list().data:
                assert time.monotonic() < deadline, "files outlived the retention time"
                time.sleep(0.2)
            client.files.create(file=("again.jsonl", _jsonl(40)), purpose="batch")


def test_sigterm_mid_batch_drains_then_resumes(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    n = 300
    with _workers(2, "--model-arg", "base_ms=50") as workers:
        urls = [w.url for w in workers]
        with run_router(urls, "--batch-store", store) as router:
            client = _client(router)
            uploaded = client.files.create(file=("in.jsonl", _jsonl(n)), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/predict",  # type: ignore[arg-type]
                completion_window="24h",
            )
            _wait(
                client,
                batch.id,
                lambda b: b.request_counts.completed >= 50,
                within=60,
                what="50 completed",
            )
            started = time.monotonic()
            assert router.stop(timeout=20) == 0
            # The drain sends nothing new and waits only for what was in flight.
            assert time.monotonic() - started < 5
        with run_router(urls, "--batch-store", store) as again:
            client = _client(again)
            done = _wait(client, batch.id, lambda b: b.status in FINAL, within=60, what="done")
            assert done.status == "completed"
            lines = _output(client, done.output_file_id)
            assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(n)]
        # A drain loses nothing: whatever ran before the stop was stored.
        assert _served(urls) == n
