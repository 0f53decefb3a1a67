"""The proxy gives an upstream's slot back on every way out of an attempt."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from gpufleet.router.admission import Admission
from gpufleet.router.http1 import ConnectionPool, UpstreamConnections
from gpufleet.router.policies import make_policy
from gpufleet.router.pool import Registry, WorkerSpec
from gpufleet.router.proxy import Proxy, ProxySettings
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import READY


class _PoolFails(UpstreamConnections):
    """A client whose pool cannot be made (as for an upstream URL it cannot encode)."""

    def pool(self, url: str) -> ConnectionPool:
        raise ValueError(f"cannot connect to {url}")


async def test_a_failure_before_the_request_goes_out_gives_the_slot_back() -> None:
    registry = Registry(max_outstanding=2)
    upstream = registry.add(WorkerSpec("http://127.0.0.1:9"))
    registry.set_state(upstream, READY)
    pool = registry.pools["default"]
    admission = Admission(pool, make_policy("round-robin", pool), max_queue=4, queue_timeout_s=1)
    proxy = Proxy(
        registry,
        {"default": admission},
        _PoolFails(connect_timeout_s=1),
        ProxySettings(
            timeout_s=5,
            retries=0,
            max_body_bytes=1024,
            max_fails=3,
            fail_timeout_s=10,
            sticky_header="X-Session-Id",
        ),
        Totals(),
    )
    for _ in range(3):  # more than the cap: a leaked slot would make the third wait
        with pytest.raises(ValueError, match="cannot connect"):
            await proxy.handle(make_mocked_request("GET", "/x"))
        assert upstream.in_flight == 0
    assert proxy.active == 0
