"""Passive ejection takes at most ``max_ejection_percent`` of a pool, never its last ready
upstream for a 5xx that may have come from the request."""

from __future__ import annotations

import pytest

from gpufleet.router.admission import Admission
from gpufleet.router.http1 import UpstreamConnections
from gpufleet.router.policies import make_policy
from gpufleet.router.pool import Registry, WorkerSpec
from gpufleet.router.proxy import Proxy, ProxySettings
from gpufleet.router.stats import Totals
from gpufleet.router.upstream import EJECTED, READY, Upstream


def _proxy(n: int, percent: float) -> tuple[Proxy, list[Upstream]]:
    registry = Registry()
    ups = [registry.add(WorkerSpec(f"http://127.0.0.1:{9000 + i}")) for i in range(n)]
    for u in ups:
        registry.set_state(u, READY)
    pool = registry.pools["default"]
    admission = Admission(pool, make_policy("round-robin", pool), max_queue=4, queue_timeout_s=1)
    settings = ProxySettings(
        timeout_s=5,
        retries=0,
        max_body_bytes=1024,
        max_fails=1,
        fail_timeout_s=10,
        sticky_header="X-Session-Id",
        max_ejection_percent=percent,
    )
    return Proxy(
        registry,
        {"default": admission},
        UpstreamConnections(connect_timeout_s=1),
        settings,
        Totals(),
    ), ups


@pytest.mark.parametrize(
    ("n", "percent", "ejected"), [(1, 50, 1), (2, 50, 1), (4, 50, 2), (5, 10, 1), (4, 100, 4)]
)
def test_at_most_a_share_of_the_pool_is_ejected(n: int, percent: float, ejected: int) -> None:
    proxy, ups = _proxy(n, percent)
    for u in ups:
        proxy.ejector.failed(u)  # a transport failure (not sent, lost): not input-shaped
    assert sum(u.state == EJECTED for u in ups) == ejected
    assert proxy.totals.ejections_held == n - ejected


def test_the_last_ready_upstream_stays_for_input_shaped_failures() -> None:
    proxy, [only] = _proxy(1, 100)
    proxy.ejector.failed(only, input_shaped=True)
    assert only.state == READY
    assert proxy.totals.ejections_held == 1
    proxy.ejector.failed(only)
    assert only.state == EJECTED
