"""Whose fault a failed item is: the input's (a poisoned item) or the worker's own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gpufleet.errors import ModelError
from gpufleet.worker.runner import FAILING_CALLS_OWN, ItemFailed, Runner, is_device_error

_FAST = {"base_ms": "0", "per_item_ms": "0", "fail_on": "BAD"}


@pytest.fixture
async def runner() -> AsyncIterator[Runner]:
    r = Runner("synthetic", _FAST, "cpu")
    await r.load()
    yield r
    r.shutdown(wait=True)


async def test_an_item_failing_beside_good_ones_is_the_inputs_fault(runner: Runner) -> None:
    out = await runner.predict(["a", "BAD", "b"])
    failed = out[1]
    assert isinstance(failed, ItemFailed)
    assert failed.request_fault
    assert [o["echo"] for o in (out[0], out[2])] == ["a", "b"]
    assert runner.failing_calls == 0


async def test_lone_failures_become_the_workers_after_several_in_a_row(runner: Runner) -> None:
    faults = []
    for _ in range(FAILING_CALLS_OWN + 1):
        with pytest.raises(ModelError) as info:
            await runner.predict(["BAD"])
        faults.append(info.value.request_fault)
    assert faults == [True] * (FAILING_CALLS_OWN - 1) + [False, False]
    await runner.predict(["ok"])  # the device works: the next lone failure is the input's
    with pytest.raises(ModelError) as info:
        await runner.predict(["BAD"])
    assert info.value.request_fault


async def test_a_batch_of_only_bad_items_counts_as_one_failing_call(runner: Runner) -> None:
    out = await runner.predict(["BAD", "BAD"])
    assert all(isinstance(o, ItemFailed) and o.request_fault for o in out)
    assert runner.failing_calls == 1


def test_device_errors_are_never_the_inputs() -> None:
    assert is_device_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_device_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_device_error(ValueError("CUDA error in the prompt text"))
    assert not is_device_error(RuntimeError("synthetic failure"))
