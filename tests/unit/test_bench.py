"""The pure parts of ``gpufleet bench``: numbers from samples, payloads, shares, outputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import msgspec
import pytest

from gpufleet import wire
from gpufleet._percentile import percentile
from gpufleet.config.operate import BenchConfig
from gpufleet.errors import ConfigError
from gpufleet.operate.bench import (
    BenchResult,
    ScalingStep,
    default_bodies,
    progress_line,
    read_bodies,
    shares_between,
    shares_from_headers,
)
from gpufleet.operate.fleetview import FleetView, WorkerView, rates
from gpufleet.operate.load import NOT_SENT, Sample, Tally, error_kind
from gpufleet.operate.monitor import router_line
from gpufleet.operate.report import render_html
from gpufleet.operate.summary import summarize, timeline
from gpufleet.operate.text import to_json


def test_bench_percentiles_are_the_nearest_rank_ones() -> None:
    # The same definition as the worker's and the router's /stats (gpufleet._percentile).
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


def test_summarize_counts_errors_by_kind_and_leaves_them_out_of_latency() -> None:
    samples = [Sample(0.0, 0.010 * (i + 1), 200) for i in range(10)]
    samples += [Sample(0.0, 5.0, 503, "503 WorkerOverloaded")] * 3
    samples += [Sample(0.0, 0.0, None, "timeout"), Sample(0.0, 0.0, None, NOT_SENT)]
    s = summarize(samples, duration_s=2.0)
    assert (s.sent, s.ok, s.failed, s.not_sent) == (14, 10, 4, 1)
    assert s.errors == {"503 WorkerOverloaded": 3, "timeout": 1}
    assert s.throughput_rps == pytest.approx(5.0)
    assert s.latency_ms["max"] == pytest.approx(100.0)  # the 5 s failures are not counted
    assert s.latency_ms["p50"] == pytest.approx(50.0)  # nearest rank: the 5th of 10
    assert s.error_rate == pytest.approx(4 / 14)


def test_timeline_buckets_completions() -> None:
    samples = [Sample(i * 0.1, 0.05, 200) for i in range(20)]  # 10/s for 2 s
    points = timeline(samples, bucket_s=0.5, end_s=2.0)
    assert len(points) == 4  # completions run from 0.05 s to 1.95 s of a 2 s run
    assert [p.ok_rps for p in points] == [10.0, 10.0, 10.0, 10.0]
    assert all(p.p50_ms == pytest.approx(50.0) for p in points if p.ok_rps)


def test_error_kind_reads_the_gpufleet_payload() -> None:
    body = json.dumps({"error": "NoHealthyBackend", "message": "x"}).encode()
    assert error_kind(503, body) == "503 NoHealthyBackend"
    assert error_kind(502, b"<html>bad gateway</html>") == "HTTP 502"


def test_payload_file_json_and_jsonl(tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text('{"input": "a", "seed": 3}\n')
    assert [json.loads(b) for b in read_bodies(one)] == [{"input": "a", "seed": 3}]
    many = tmp_path / "many.jsonl"
    many.write_text('{"input": "a"}\n\n{"input": "b"}\n')
    assert [json.loads(b)["input"] for b in read_bodies(many)] == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2"):
        read_bodies(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_bodies(tmp_path / "missing.json")


def test_default_bodies_fit_the_kind() -> None:
    emb = [json.loads(b)["input"] for b in default_bodies("embeddings")]
    assert len(set(emb)) > 1
    assert all(isinstance(x, str) and "Sentence" in x for x in emb)
    assert json.loads(default_bodies(None)[0]) == {"input": "bench-0"}


def _view(*workers: WorkerView, at: float = 0.0) -> FleetView:
    return FleetView("http://r", workers, at)


def test_shares_between_two_views() -> None:
    before = _view(
        WorkerView("a", "http://a", served=10, batches=5, items=10),
        WorkerView("b", "http://b", served=0, batches=0, items=0),
    )
    after = _view(
        WorkerView("a", "http://a", served=40, batches=10, items=40),
        WorkerView("b", "http://b", served=10, batches=2, items=10),
        at=2.0,
    )
    shares = {s.id: s for s in shares_between(before, after)}
    assert shares["a"].served == 30
    assert shares["a"].share == pytest.approx(0.75)
    assert shares["a"].avg_batch_size == pytest.approx(6.0)
    assert shares["b"].share == pytest.approx(0.25)
    assert rates(before, after) == {"a": 15.0, "b": 5.0}


def test_shares_from_upstream_headers() -> None:
    samples = [Sample(0, 0.01, 200, upstream="u1")] * 3 + [Sample(0, 0.01, 200, upstream="u2")]
    shares = shares_from_headers(samples)
    assert [(s.id, s.served) for s in shares] == [("u1", 3), ("u2", 1)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"requests": 0}, "requests"),
        ({"rate": 100000.0, "duration_s": 3600.0}, "rate"),
        ({"scaling": True}, "admin-token"),
        ({"url": "localhost:8000"}, "http://"),
        ({"duration_s": 0.0}, "duration_s"),
    ],
)
def test_bench_config_refuses_unbounded_or_broken_runs(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        BenchConfig(**kwargs)  # type: ignore[arg-type]


def test_bench_config_mode() -> None:
    assert BenchConfig().mode == "closed"
    assert BenchConfig(rate=5).mode == "open"
    assert BenchConfig(burst=50).mode == "burst"


def _result() -> BenchResult:
    samples = [Sample(i * 0.01, 0.02 + i * 0.001, 200) for i in range(50)]
    samples.append(Sample(0.5, 0.0, 503, "503 WorkerOverloaded"))
    s = summarize(samples, 0.6)
    steps = [ScalingStep(1, s, 1.0), ScalingStep(2, s, math.nan)]
    return BenchResult("http://x", "/predict", "closed", {"concurrency": 4}, s, samples,
                       kind="generic", model="synthetic", scaling=steps)  # fmt: skip


def test_report_is_self_contained_html_with_charts() -> None:
    html = render_html(_result())
    assert html.startswith("<!doctype html>")
    assert html.count("<svg") >= 4  # throughput, latency, distribution, scaling
    assert "503 WorkerOverloaded" in html
    assert "src=" not in html
    assert "href=" not in html


def test_json_output_has_no_nan() -> None:
    data = to_json(_result())
    text = json.dumps(data, allow_nan=False)  # raises on NaN
    assert data["scaling"][1]["efficiency"] is None
    assert json.loads(text)["summary"]["ok"] == 50


def test_shares_after_a_restart_are_never_negative() -> None:
    before = _view(WorkerView("a", "http://a", served=500, batches=100, items=500, pid=1))
    # Restarted meanwhile: its counters start from zero again.
    after = _view(WorkerView("a", "http://a", served=40, batches=10, items=40, pid=2), at=2.0)
    [share] = shares_between(before, after)
    assert (share.served, share.batches) == (40, 10)
    assert share.avg_batch_size == pytest.approx(4.0)
    no_pid = _view(WorkerView("a", "http://a", served=40, batches=10, items=40), at=2.0)
    [share] = shares_between(_view(WorkerView("a", "http://a", served=500, batches=100)), no_pid)
    assert share.batches == 10


def test_progress_line_says_sent_ok_errors_rate_and_eta() -> None:
    cfg = BenchConfig(requests=200, concurrency=4)
    line = progress_line(cfg, Tally(sent=104, ok=98, failed=2), elapsed_s=2.0)
    assert line == "bench: sent 104  ok 98  errors 2  50.0 req/s  2.0s elapsed  ETA 2.0s"
    open_cfg = BenchConfig(rate=10.0, duration_s=5.0)
    assert progress_line(open_cfg, Tally(), 1.0).endswith("ETA 4.0s")
    assert progress_line(cfg, Tally(), 0.5).endswith("ETA ?")


def test_monitor_says_the_routers_state_in_words() -> None:
    counters = {f: 0 for f in wire.RouterTotals.__struct_fields__}
    totals = {
        **counters,
        "requests": 1234,
        "responses": {"2xx": 1230, "5xx": 4},
        "retries_by_reason": {},
        "queue_depth_by_priority": {},
        "in_flight": 2,
        "queue_depth": 0,
        "retries": 3,
    }
    data = {
        "server": "gpufleet-router",
        "policy": "prefix",
        "state": "ready",
        "uptime_s": 125.537,
        "workers": [],
        "pools": {},
        "routes": [],
        "totals": totals,
    }
    assert router_line(msgspec.convert(data, wire.RouterStats)) == (
        "router ready · policy prefix · up 2m05s · 1,234 requests (2xx 1,230, 5xx 4)"
        " · 2 in flight · 0 queued · 3 retries"
    )


def test_chart_axes_fit_the_run_with_round_ticks() -> None:
    from gpufleet.operate.svg import Series, chart, nice_step, ticks

    svg = chart(
        "t", [Series("ok/s", [(0.1, 40.0), (0.6, 187.0), (1.1, 120.0)])], xlabel="s", ylabel="r"
    )
    yticks = [float(v.replace(",", "")) for v in re.findall(r'class="ytick">([^<]+)<', svg)]
    xticks = [float(v) for v in re.findall(r'class="xtick">([^<]+)<', svg)]
    assert yticks == [0, 50, 100, 150, 200, 250]  # round (not 62/188), room for the legend
    assert xticks == [0, 0.2, 0.4, 0.6, 0.8, 1.0]  # the run's 1.1 s, not 2 s
    assert nice_step(1.1) == 0.2
    assert ticks(1.0, 0.25) == [0, 0.25, 0.5, 0.75, 1.0]


def test_timeline_buckets_hold_enough_answers_to_be_smooth() -> None:
    # 40 answers/s for 1.1 s: 0.05 s buckets would hold 2 each (0, 40, 0, 40 …).
    samples = [Sample(i / 40, 0.01, 200) for i in range(44)]
    points = timeline(samples, end_s=1.1)
    assert len(points) >= 10
    assert all(30 <= p.ok_rps <= 50 for p in points), [round(p.ok_rps) for p in points]
    assert points[-1].t_s <= 1.1  # the axis ends with the run
