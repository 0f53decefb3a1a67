"""``wire.admin_client.AdminClient`` against a real router: answers decoded, refusals said."""

from __future__ import annotations

import pytest

from gpufleet.errors import RequestFailed
from gpufleet.testing import run_router
from gpufleet.testing.upstreams import run_upstream
from gpufleet.wire import UpstreamState, UpstreamView
from gpufleet.wire.admin_client import AdminClient
from gpufleet.wire.http import PeerClient
from tests.integration._router import TOKEN

#: Nothing listens there: an upstream that stays ``starting``.
NOWHERE = "http://127.0.0.1:9"


async def test_list_add_drain_remove_decode_the_routers_answers() -> None:
    with (
        run_upstream() as upstream,
        run_router([upstream.url], env={"GPUFLEET_ADMIN_TOKEN": TOKEN}) as router,
    ):
        async with PeerClient() as http:
            admin = AdminClient(http, router.url + "/", TOKEN)
            (first,) = await admin.list()
            assert isinstance(first, UpstreamView)
            assert (first.url, first.pool, first.weight) == (upstream.url, "default", 1.0)
            added = await admin.add(NOWHERE, "spare", weight=2.0, labels={"node": "n1"})
            assert (added.url, added.pool, added.weight) == (NOWHERE, "spare", 2.0)
            assert (added.state, added.labels) == (UpstreamState.STARTING, {"node": "n1"})
            assert {u.id for u in await admin.list()} == {first.id, added.id}
            assert (await admin.drain(added.id)).state is UpstreamState.DRAINING
            assert (await admin.remove(added.id)).id == added.id
            assert [u.id for u in await admin.list()] == [first.id]
            with pytest.raises(RequestFailed) as info:
                await admin.drain("no-such-id")
            assert info.value.status == 404
            assert "NotFound" in info.value.message


async def test_a_wrong_token_and_a_router_without_admin_api_are_said_plainly() -> None:
    with run_upstream() as upstream:
        with run_router([upstream.url], env={"GPUFLEET_ADMIN_TOKEN": TOKEN}) as router:
            async with PeerClient() as http:
                with pytest.raises(RequestFailed, match="refused the admin token") as info:
                    await AdminClient(http, router.url, "wrong").list()
                assert info.value.status == 401
        with run_router([upstream.url]) as router:
            async with PeerClient() as http:
                with pytest.raises(RequestFailed, match="has no admin API") as info:
                    await AdminClient(http, router.url, TOKEN).list()
                assert info.value.status == 404


async def test_the_token_goes_to_admin_calls_only() -> None:
    with (
        run_upstream() as upstream,
        run_router([upstream.url], env={"GPUFLEET_ADMIN_TOKEN": TOKEN}) as router,
    ):
        async with PeerClient() as http:
            await AdminClient(http, router.url, TOKEN).list()
            # The same client reading /stats sends no Authorization: the router refuses
            # /admin without it.
            with pytest.raises(RequestFailed) as info:
                await http.get(router.url + "/admin/workers")
            assert info.value.status == 401
