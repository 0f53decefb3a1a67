"""Deployment files keep the Batch API's store where ``up`` was given one (gpufleet export)."""

from __future__ import annotations

import pytest

from tests.unit._export import layout_of


@pytest.mark.parametrize("store", ["/var/lib/gpufleet/batches", "postgresql://gpufleet@db/batches"])
def test_the_router_keeps_batches_where_up_was_told(store: str) -> None:
    layout = layout_of({"cpu_workers": 1, "batch_store": store})
    argv = layout.router_argv(exe=("g",), host="0.0.0.0", urls=[("default", "http://a:1")])
    at = argv.index("--batch-store")
    assert argv[at + 1] == store


@pytest.mark.parametrize("store", [None, "off"])
def test_no_store_flag_when_up_was_given_none(store: str | None) -> None:
    layout = layout_of({"cpu_workers": 1, "batch_store": store})
    argv = layout.router_argv(exe=("g",), host="0.0.0.0", urls=[("default", "http://a:1")])
    assert "--batch-store" not in argv
