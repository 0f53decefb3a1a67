"""``gpufleet monitor``'s rows and what it remembers between polls (pure: views made here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rich.console import Console

from gpufleet import wire
from gpufleet.operate.fleetview import FleetView, WorkerView
from gpufleet.operate.monitor import MonitorState, render, row_cells, where

GPU = wire.GpuReading(
    index=3,
    name="NVIDIA H100 80GB HBM3",
    utilization_pct=87,
    memory_used_mb=40960.0,
    memory_total_mb=81920.0,
)


def view(*workers: WorkerView, at: float = 0.0) -> FleetView:
    return FleetView("http://router", workers, at)


def text(cells: Sequence[object]) -> list[str]:
    return [str(c) for c in cells]


def test_a_gpu_worker_shows_utilisation_and_memory() -> None:
    w = WorkerView("w0", "http://gpu-a:8001", state="ready", served=10, device="cuda", gpu=GPU)
    cells = text(row_cells(w, 12.5, 0))
    assert cells[0] == "w0"
    assert cells[7] == "12.5"
    assert cells[-2:] == ["87", "40.0/80 GiB"]
    cpu = text(row_cells(replace(w, gpu=None), None, 0))
    assert cpu[-2:] == ["-", "-"]
    assert cpu[7] == "-"


def test_restarts_errors_and_state_changes_are_remembered() -> None:
    state = MonitorState()
    a = WorkerView("w0", "http://a", state="ready", served=10, errors=0, pid=100)
    b = WorkerView("w1", "http://b", state="ready", served=4, errors=0, pid=200)
    assert state.observe(view(a, b, at=0.0)) == {}  # rates need two polls
    a2 = replace(a, served=30, errors=2, pid=101)
    b2 = replace(b, served=4, state="ejected")
    rates = state.observe(view(a2, b2, at=2.0))
    assert rates == {"w0": 10.0, "w1": 0.0}
    assert state.restarts == {"w0": 1}
    assert any("restarted (pid 100 → 101)" in e for e in state.events["w0"])
    assert any("+2 error(s), 2 in all" in e for e in state.events["w0"])
    assert any("state ready → ejected" in e for e in state.events["w1"])

    console = Console(width=200, record=True)
    console.print(render(view(a2, b2, at=2.0), rates, state, errors=True))
    out = console.export_text()
    assert "restarted (pid 100 → 101)" in out
    assert "http://router · 2 worker(s)" in out


def test_device_column_says_where_the_fleet_placed_a_worker() -> None:
    w = WorkerView("w0", "http://10.0.0.7:8001", device="cuda")
    assert where(w) == "cuda"
    assert where(replace(w, labels={"placement": "10.0.0.7/gpu3"})) == "10.0.0.7/gpu3 · cuda"
    assert where(replace(w, labels={"device": "2"})) == "gpu2 · cuda"
    assert where(replace(w, device="cpu", labels={"device": "cpu"})) == "cpu"
    assert where(replace(w, device=None)) == "-"


def test_llm_upstreams_show_tokens_per_second_and_ttft() -> None:
    state = MonitorState()
    a = WorkerView("w0", "http://a", state="ready", served=10, completion_tokens=1000)
    state.observe(view(a, at=0.0))
    a2 = replace(a, served=12, completion_tokens=1600, ttft_p50_ms=42.0)
    rates = state.observe(view(a2, at=2.0))
    assert state.tokens_per_s == {"w0": 300.0}
    console = Console(width=250, record=True)
    console.print(render(view(a2, at=2.0), rates, state, errors=False))
    out = console.export_text()
    assert "tok/s" in out
    assert "TTFT ms" in out
    assert " 300 " in out
    # A worker restart resets its counters: the rate is 0, never negative.
    state.observe(view(replace(a2, completion_tokens=10), at=4.0))
    assert state.tokens_per_s == {"w0": 0.0}
