"""Input faults are the caller's (issue 13): hostile bodies never eject a worker.

Two synthetic workers behind a router; deeply nested JSON and poisoned prompts (``fail_on``)
are answered 400 and 500 with ``X-Gpufleet-Fault: request``, nobody is ejected, and
everyone else keeps being served meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from gpufleet import wire
from gpufleet.testing import run_router, run_worker
from tests.integration._router import get_json, wait_state

_WORKER_ARGS = ("--model-arg", "base_ms=5", "--model-arg", "per_item_ms=1")
_POISON = "POISON"


async def _post(
    session: aiohttp.ClientSession, url: str, data: bytes
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=data, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_nested_json_and_poisoned_prompts_eject_nobody() -> None:
    args = (*_WORKER_ARGS, "--model-arg", f"fail_on={_POISON}")
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(run_worker("synthetic", *args)) for _ in range(2)]
        router = stack.enter_context(
            run_router([w.url for w in workers], "--max-fails", "3", "--fail-timeout", "30")
        )
        for w in workers:
            await wait_state(router.url, w.url, "ready", within=20)
        nested = b'{"input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        poisoned = [
            b'{"input": "POISON"}',
            b'{"inputs": ["a", "POISON", "b"]}',
            b'{"input": "POISON"}',
        ]
        served: list[int] = []
        stop = asyncio.Event()
        more_served = asyncio.Event()
        wanted = [1 << 30]  # how many answers make ``more_served``

        async def everyone_else(session: aiohttp.ClientSession) -> None:
            i = 0
            while not stop.is_set():
                status, _, body = await _post(
                    session, router.url + "/predict", f'{{"input": "ok{i}"}}'.encode()
                )
                assert status == 200, body
                served.append(i)
                if len(served) >= wanted[0]:
                    more_served.set()
                i += 1

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            others = [asyncio.create_task(everyone_else(session)) for _ in range(4)]
            try:
                answers: list[tuple[int, dict[str, str], bytes]] = []
                for _ in range(4):
                    answers.append(await _post(session, router.url + "/predict", nested))
                for body in poisoned:
                    answers.append(await _post(session, router.url + "/predict", body))
                wanted[0] = len(served) + 20  # still served after the hostile ones
                async with asyncio.timeout(20):
                    await more_served.wait()
            finally:
                stop.set()
                await asyncio.gather(*others)
        for status, headers, body in answers[:4]:
            assert status == 400, body[:200]
            assert b"nested deeper" in body
            assert headers[wire.FAULT_HEADER] == wire.FAULT_REQUEST
        for status, headers, body in answers[4:]:
            assert status == 500, body[:200]
            assert headers[wire.FAULT_HEADER] == wire.FAULT_REQUEST
        stats = await get_json(router.url + "/stats")
        entries: list[dict[str, Any]] = stats["workers"]
        assert [(e["state"], e["errors"], e["ejections"]) for e in entries] == [
            ("ready", 0, 0),
            ("ready", 0, 0),
        ], entries
        assert stats["totals"]["request_faults"] == 3
        assert stats["totals"]["responses"]["5xx"] == 3
        for w in workers:
            assert "Traceback" not in w.log()
