"""Small inline-SVG charts for the HTML report: lines, points and bars, no dependency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

W, H = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 60, 16, 28, 40
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f")


@dataclass(frozen=True, slots=True)
class Series:
    """Points of one line (or cloud) with its legend name."""

    name: str
    points: Sequence[tuple[float, float]]
    style: str = "line"  # "line" | "dots" | "dash"


def nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2 or 5 × a power of ten)."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    return next(m * exp for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * exp >= value)


def nice_step(span: float, target: int = 4) -> float:
    """A round tick step (1, 2 or 5 × a power of ten) giving about ``target`` steps."""
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / target
    exp = 10.0 ** math.floor(math.log10(raw))
    return min((m * exp for m in (1.0, 2.0, 5.0, 10.0)), key=lambda s: abs(math.log(s / raw)))


def ticks(vmax: float, step: float) -> list[float]:
    """0, step, 2·step, … up to ``vmax`` (rounded so ``0.1 * 3`` reads ``0.3``)."""
    count = math.floor(vmax / step + 1e-9)
    return [round(i * step, 10) for i in range(count + 1)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 or v == 0 else f"{v:.3g}"


def _frame(
    title: str, xlabel: str, ylabel: str, xmax: float, ymax: float, xstep: float, ystep: float
) -> list[str]:
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{LEFT}" y="18" class="title">{escape(title)}</text>',
    ]
    for v in ticks(ymax, ystep):
        y = TOP + ph - ph * v / ymax
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="ytick">{_fmt(v)}</text>')
    for v in ticks(xmax, xstep):
        x = LEFT + pw * v / xmax
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 16}" class="xtick">{_fmt(v)}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 6}" class="xlabel">{escape(xlabel)}</text>')
    out.append(
        f'<text transform="translate(14 {TOP + ph / 2}) rotate(-90)" class="ylabel">'
        f"{escape(ylabel)}</text>"
    )
    return out


def chart(
    title: str,
    series: Sequence[Series],
    *,
    xlabel: str,
    ylabel: str,
    xmax: float | None = None,
    ymax: float | None = None,
) -> str:
    """An x/y chart of one or more series (NaN points break a line).

    The x axis ends where the data (or ``xmax``) ends, the y axis at the first round tick
    at or above the data; ticks are round numbers (1, 2 or 5 × a power of ten apart).
    """
    finite = [(x, y) for s in series for x, y in s.points if math.isfinite(y)]
    xmax = xmax or max((x for x, _ in finite), default=0.0) or 1.0
    # Some room above the data: the legend sits at the top of the plot.
    top = ymax or 1.12 * max((y for _, y in finite), default=0.0) or 1.0
    xstep, ystep = nice_step(xmax), nice_step(top)
    ymax = ymax or math.ceil(top / ystep - 1e-9) * ystep
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    out = _frame(title, xlabel, ylabel, xmax, ymax, xstep, ystep)

    def xy(x: float, y: float) -> str:
        return f"{LEFT + pw * x / xmax:.1f},{TOP + ph - ph * min(y, ymax) / ymax:.1f}"

    for n, s in enumerate(series):
        color = COLORS[n % len(COLORS)]
        if s.style == "dots":
            out.extend(
                f'<circle cx="{xy(x, y).split(",")[0]}" cy="{xy(x, y).split(",")[1]}" r="1.6" '
                f'fill="{color}" fill-opacity="0.5"/>'
                for x, y in s.points
                if math.isfinite(y)
            )
        else:
            dash = ' stroke-dasharray="5 4"' if s.style == "dash" else ""
            runs: list[list[str]] = [[]]
            for x, y in s.points:
                if math.isfinite(y):
                    runs[-1].append(xy(x, y))
                elif runs[-1]:
                    runs.append([])
            out.extend(
                f'<polyline points="{" ".join(r)}" fill="none" stroke="{color}" '
                f'stroke-width="2"{dash}/>'
                for r in runs
                if r
            )
        lx = LEFT + 8 + 150 * n
        out.append(f'<rect x="{lx}" y="{TOP + 4}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 14}" y="{TOP + 13}" class="legend">{escape(s.name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bars(title: str, items: Sequence[tuple[str, float]], *, unit: str = "") -> str:
    """Horizontal bars, one per labelled value."""
    height = TOP + 24 * max(1, len(items)) + 12
    vmax = nice_max(max((v for _, v in items), default=1.0))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" class="chart" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="8" y="18" class="title">{escape(title)}</text>',
    ]
    for n, (label, value) in enumerate(items):
        y = TOP + 24 * n
        width = (W - 260) * value / vmax
        color = COLORS[n % len(COLORS)]
        out.append(f'<text x="8" y="{y + 14}" class="legend">{escape(label[:28])}</text>')
        out.append(f'<rect x="200" y="{y}" width="{width:.1f}" height="18" fill="{color}"/>')
        out.append(
            f'<text x="{206 + width:.1f}" y="{y + 14}" class="legend">{value:,.1f}{unit}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
