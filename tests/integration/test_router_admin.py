"""``/admin/workers``: the token guard, and add, drain and remove on a running router."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp

from gpufleet.testing import run_router
from gpufleet.testing.upstreams import drive, run_upstream
from tests.integration._router import TOKEN, get_json, wait_state

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _call(
    method: str, url: str, *, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, url, headers=headers, json=body) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_admin_needs_the_token_and_is_off_without_one() -> None:
    with run_upstream() as upstream:
        with run_router([upstream.url], env={"GPUFLEET_ADMIN_TOKEN": TOKEN}) as router:
            admin = router.url + "/admin/workers"
            for headers in (
                None,
                {"Authorization": "Bearer wrong-token"},
                {"Authorization": TOKEN},
            ):
                status, body = await _call("GET", admin, headers=headers)
                assert status == 401, (headers, body)
                assert body["error"] == "Unauthorized"
            status, _ = await _call("POST", admin, body={"url": "http://127.0.0.1:1"})
            assert status == 401
            status, _ = await _call("DELETE", admin + "/w0")
            assert status == 401
            status, _ = await _call("POST", admin + "/w0/drain")
            assert status == 401
            # Nothing changed, and with the token the same calls work.
            status, body = await _call("GET", admin, headers=AUTH)
            assert status == 200
            assert [(w["id"], w["url"]) for w in body["workers"]] == [("w0", upstream.url)]
            status, body = await _call("POST", admin, headers=AUTH, body={"url": "file:///etc"})
            assert status == 400, body
        with run_router([upstream.url]) as router:
            status, _ = await _call("GET", router.url + "/admin/workers", headers=AUTH)
            assert status == 404


async def test_add_drain_and_remove() -> None:
    with (
        run_upstream() as a,
        run_upstream() as b,
        run_router(
            [a.url], "--admin-token", TOKEN, "--policy", "round-robin", "--health-interval", "0.2"
        ) as router,
    ):
        admin = router.url + "/admin/workers"
        status, added = await _call(
            "POST", admin, headers=AUTH, body={"url": b.url + "/", "weight": 2}
        )
        assert status == 201, added
        assert (added["url"], added["weight"], added["state"]) == (b.url, 2.0, "starting")
        await wait_state(router.url, b.url, "ready", within=10)
        # Adding it again is harmless: the same entry comes back.
        status, again = await _call("POST", admin, headers=AUTH, body={"url": b.url})
        assert (status, again["id"]) == (200, added["id"])

        results = await drive(router.url + "/echo", 20, 2)
        assert Counter(up for _, up, _ in results) == {"w0": 10, added["id"]: 10}

        # Drain a while a slow request is in flight on it: that one finishes, no new ones go there.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def slow() -> tuple[int, str]:
                async with session.post(router.url + "/slow?ms=1500", json={}) as resp:
                    await resp.read()
                    return resp.status, resp.headers["X-Gpufleet-Upstream"]

            slow_calls = [asyncio.create_task(slow()) for _ in range(2)]  # one on each
            await asyncio.sleep(0.4)
            status, drained = await _call("POST", f"{admin}/w0/drain", headers=AUTH)
            assert (status, drained["state"]) == (200, "draining")
            entry = await get_json(router.url + "/stats")
            assert entry["workers"][0]["in_flight"] == 1
            during = await drive(router.url + "/echo", 20, 4)
            assert {up for _, up, _ in during} == {added["id"]}
            finished = await asyncio.gather(*slow_calls)
        assert sorted(finished) == sorted([(200, "w0"), (200, added["id"])])
        seen_a = await get_json(a.url + "/stats")
        assert seen_a["paths"] == {"/echo": 10, "/slow": 1}
        assert seen_a["completed"] == 1
        # A drained upstream is no longer probed into rotation.
        await asyncio.sleep(0.6)
        assert (await get_json(router.url + "/stats"))["workers"][0]["state"] == "draining"

        status, removed = await _call("DELETE", f"{admin}/{added['id']}", headers=AUTH)
        assert status == 200, removed
        status, listed = await _call("GET", admin, headers=AUTH)
        assert [w["id"] for w in listed["workers"]] == ["w0"]
        status, _ = await _call("DELETE", f"{admin}/{added['id']}", headers=AUTH)
        assert status == 404
        # Nothing is left in rotation: 503 at once, with Retry-After.
        async with (
            aiohttp.ClientSession() as session,
            session.post(router.url + "/echo", json={}) as resp,
        ):
            assert resp.status == 503
            assert "Retry-After" in resp.headers
        # Adding the drained one back puts it in rotation again after a good probe.
        status, back = await _call("POST", admin, headers=AUTH, body={"url": a.url})
        assert (status, back["id"]) == (200, "w0")
        await wait_state(router.url, a.url, "ready", within=10)
        assert {s for s, _, _ in await drive(router.url + "/echo", 5, 1)} == {200}
