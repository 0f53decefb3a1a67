"""``bench --report out.html``: one self-contained page of plots (inline SVG, no network)."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from gpufleet._files import write_atomic
from gpufleet._percentile import percentile
from gpufleet.operate.bench import BenchResult
from gpufleet.operate.svg import Series, bars, chart

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1340px;color:#111;
padding:0 16px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#555}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:110px}
.card b{display:block;font-size:22px}.card span{color:#666;font-size:12px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
.chart{width:100%;height:auto;border:1px solid #eee;border-radius:8px;background:#fff}
.chart .title{font-weight:600;font-size:13px}.chart .grid{stroke:#eee}
.chart .ytick{text-anchor:end;font-size:11px;fill:#666}
.chart .xtick{text-anchor:middle;font-size:11px;fill:#666}
.chart .xlabel{text-anchor:middle;font-size:12px;fill:#333}
.chart .ylabel{text-anchor:middle;font-size:12px;fill:#333}.chart .legend{font-size:12px}
table{border-collapse:collapse}td,th{border-bottom:1px solid #eee;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}.bad{color:#b91c1c}
"""

#: Points drawn in the latency scatter at most (the percentiles use every sample).
MAX_DOTS = 4000


def _card(label: str, value: str) -> str:
    return f'<div class="card"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _ms(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:,.1f} ms"


def render_html(result: BenchResult) -> str:
    """The report of ``result`` as one HTML document."""
    s = result.summary
    lat = s.latency_ms
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items() if v not in (None, False))
    who = f"{result.model or 'unknown model'} ({result.kind or 'kind unknown'})"
    html = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>gpufleet bench · {escape(result.url)}</title><style>{_CSS}</style></head><body>",
        f"<h1>gpufleet bench · {escape(result.url + result.path)}</h1>",
        f"<div class='meta'>{escape(result.started_at)} · {escape(who)} · "
        f"{escape(result.mode)} · {escape(settings)}</div>",
        "<div class='cards'>",
        _card("requests/s", f"{s.throughput_rps:,.1f}"),
        _card("p50", _ms(lat.get("p50"))),
        _card("p90", _ms(lat.get("p90"))),
        _card("p99", _ms(lat.get("p99"))),
        _card("max", _ms(lat.get("max"))),
        _card("ok / sent", f"{s.ok} / {s.sent}"),
        _card("error rate", f"{s.error_rate * 100:.1f}%"),
        *_rate_cards(result),
        "</div><div class='grid2'>",
    ]
    points = result.timeline()
    run_s = max(s.duration_s, max((p.t_s for p in points), default=0.0))
    html.append(
        chart(
            "Throughput over time",
            [
                Series("ok/s", [(p.t_s, p.ok_rps) for p in points]),
                Series("errors/s", [(p.t_s, p.error_rps) for p in points]),
            ],
            xlabel="seconds since start",
            ylabel="answers per second",
            xmax=run_s or None,
        )
    )
    ok = [x for x in result.samples if x.ok]
    step = max(1, len(ok) // MAX_DOTS)
    html.append(
        chart(
            "Latency over time",
            [
                Series("request", [(x.start_s, x.latency_s * 1000) for x in ok[::step]], "dots"),
                Series("p50", [(p.t_s, p.p50_ms) for p in points]),
                Series("p99", [(p.t_s, p.p99_ms) for p in points]),
            ],
            xlabel="seconds since start",
            ylabel="latency (ms)",
            xmax=run_s or None,
        )
    )
    sorted_ms = sorted(x.latency_s * 1000 for x in ok)
    cdf = [(q / 10, percentile(sorted_ms, q / 1000)) for q in range(0, 1001, 5)] if ok else []
    html.append(
        chart(
            "Latency distribution",
            [Series("latency", cdf)],
            xlabel="percentile",
            ylabel="latency (ms)",
            xmax=100,
        )
    )
    if result.shares:
        html.append(
            bars(
                "Share of each worker (% of requests served)",
                [(w.id, w.share * 100) for w in result.shares],
                unit="%",
            )
        )
    html.append("</div>")
    html.extend(_shares_table(result))
    html.extend(_scaling(result))
    html.extend(_errors(result))
    html.extend(f"<p class='meta'>note: {escape(n)}</p>" for n in result.notes)
    html.append("</body></html>")
    return "\n".join(html)


def _rate_cards(result: BenchResult) -> list[str]:
    """An open loop's target rate beside what was sent and answered."""
    if result.mode != "open":
        return []
    s = result.summary
    target = result.settings.get("rate")
    sent = s.sent / s.duration_s if s.duration_s > 0 else 0.0
    cards = [_card("target req/s", f"{target:,.1f}")] if isinstance(target, float) else []
    return [*cards, _card("sent req/s", f"{sent:,.1f}")]


def _shares_table(result: BenchResult) -> list[str]:
    """Each worker: served, its share, the batches it formed and their average size."""
    if not result.shares:
        return []
    rows = []
    for w in result.shares:
        batches = "-" if w.batches is None else f"{w.batches:,}"
        avg = "-" if w.avg_batch_size is None else f"{w.avg_batch_size:.2f}"
        rows.append(
            f"<tr><td>{escape(w.id)}</td><td>{escape(w.url)}</td><td>{w.served:,}</td>"
            f"<td>{w.share * 100:.1f}%</td><td>{batches}</td><td>{avg}</td></tr>"
        )
    head = (
        "<tr><th>worker</th><th>url</th><th>served</th><th>share</th><th>batches</th>"
        "<th>avg batch</th></tr>"
    )
    return [f"<h2>Workers</h2><table>{head}{''.join(rows)}</table>"]


def _scaling(result: BenchResult) -> list[str]:
    if not result.scaling:
        return []
    one = result.scaling[0].summary.throughput_rps
    steps = result.scaling
    out = ["<h2>Scaling</h2><div class='grid2'>"]
    out.append(
        chart(
            "Throughput by number of workers",
            [
                Series("measured", [(st.workers, st.summary.throughput_rps) for st in steps]),
                Series("linear", [(st.workers, st.workers * one) for st in steps], "dash"),
            ],
            xlabel="workers",
            ylabel="requests per second",
        )
    )
    out.append("<table><tr><th>workers</th><th>req/s</th><th>efficiency</th><th>p50</th>")
    out.append("<th>p99</th><th>errors</th></tr>")
    for st in steps:
        eff = "-" if math.isnan(st.efficiency) else f"{st.efficiency * 100:.0f}%"
        lat = st.summary.latency_ms
        out.append(
            f"<tr><td>{st.workers}</td><td>{st.summary.throughput_rps:,.1f}</td><td>{eff}</td>"
            f"<td>{_ms(lat.get('p50'))}</td><td>{_ms(lat.get('p99'))}</td>"
            f"<td>{st.summary.failed}</td></tr>"
        )
    out.append("</table></div>")
    return out


def _errors(result: BenchResult) -> list[str]:
    errors = dict(result.summary.errors)
    if result.summary.not_sent:
        errors["not sent (client at --max-in-flight)"] = result.summary.not_sent
    if not errors:
        return ["<h2>Errors</h2><p>None.</p>"]
    rows = "".join(
        f"<tr><td class='bad'>{escape(k)}</td><td>{n}</td></tr>" for k, n in errors.items()
    )
    return [f"<h2>Errors by kind</h2><table><tr><th>kind</th><th>count</th></tr>{rows}</table>"]


def write_report(result: BenchResult, path: str | Path) -> Path:
    """Write the report to ``path`` (atomically) and return it."""
    return write_atomic(path, render_html(result))
