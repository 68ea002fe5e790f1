"""Line charts as inline SVG, shared by `durabatch report` (one HTML file) and `durabatch dashboard` (the same
HTML fragments, refreshed): no plotting dependency, nothing fetched. A series can have gaps (a restart: the job
was not running there) and vertical marks (each run's start)."""

from __future__ import annotations

import bisect
import html
import math
from collections.abc import Sequence
from typing import Any

MAX_POINTS = 2000  # longer series are thinned (first and last of each segment kept) so that the page stays small
W, H, LEFT, RIGHT, TOP, BOTTOM = 680, 260, 64, 20, 30, 42  # chart size and margins, px
COLOR = "#1f77b4"


def chart(title: str, xs: Sequence[float], ys: Sequence[Any], x_label: str, y_label: str, zero: bool = False,
          breaks: Sequence[float] = (), marks: Sequence[tuple[float, str]] = ()) -> str:
    """One polyline per segment: a new segment starts at each x in `breaks` (no line is drawn across it); `marks`
    are labelled dashed vertical lines (x, label); markers show lone points and the exact values on hover."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if isinstance(y, int | float) and math.isfinite(y)]
    if not pts:
        return f'<p class="empty">{_e(title)}: no data yet.</p>'
    segments = [_thin(s) for s in _split(pts, sorted(breaks))]
    pts = [p for s in segments for p in s]
    xt = _ticks(min(0.0, *(x for x, _ in pts)), max([x for x, _ in pts] + [m for m, _ in marks]))
    yt = _ticks(min([y for _, y in pts] + ([0.0] if zero else [])), max(y for _, y in pts))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - xt[0]) / (xt[-1] - xt[0]) * pw, 1)

    def py(y: float) -> float:
        return round(TOP + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-label="{_e(title)}" font-family="sans-serif" font-size="11" fill="#333">',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{_e(title)}</text>']
    out += [f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(v)}" y2="{py(v)}" stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 6}" y="{py(v) + 4}" text-anchor="end">{label}</text>' for v, label in
            zip(yt, labels(yt), strict=True)]
    out += [f'<line x1="{px(v)}" x2="{px(v)}" y1="{TOP + ph}" y2="{TOP + ph + 4}" stroke="#888"/>'
            f'<text x="{px(v)}" y="{TOP + ph + 16}" text-anchor="middle">{label}</text>' for v, label in
            zip(xt, labels(xt), strict=True)]
    out += [f'<line x1="{px(m)}" x2="{px(m)}" y1="{TOP}" y2="{TOP + ph}" stroke="#d62728" stroke-dasharray="4 3"/>'
            f'<text x="{px(m) + 3}" y="{TOP + 10}" fill="#d62728">{_e(label)}</text>' for m, label in marks]
    out += [f'<path d="M{LEFT},{TOP}V{TOP + ph}H{W - RIGHT}" fill="none" stroke="#888"/>',
            f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle">{_e(x_label)}</text>',
            f'<text transform="translate(14 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>']
    out += [f'<polyline fill="none" stroke="{COLOR}" stroke-width="1.6" points="'
            + " ".join(f"{px(x)},{py(y)}" for x, y in s) + '"/>' for s in segments]
    if len(pts) <= 60:
        out += [f'<circle cx="{px(x)}" cy="{py(y)}" r="2.5" fill="{COLOR}"><title>{x:.6g}: {y:.6g}</title>'
                "</circle>" for x, y in pts]
    return "\n".join(out) + "\n</svg>"


def _split(pts: list[tuple[float, float]], breaks: list[float]) -> list[list[tuple[float, float]]]:
    segments: dict[int, list[tuple[float, float]]] = {}
    for x, y in pts:
        segments.setdefault(bisect.bisect_right(breaks, x), []).append((x, y))
    return [segments[k] for k in sorted(segments)]


def _thin(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(pts) <= MAX_POINTS:
        return pts
    stride = math.ceil(len(pts) / MAX_POINTS)
    return pts[::stride] + ([pts[-1]] if (len(pts) - 1) % stride else [])


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]; the first and last are the axis ends."""
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice((hi - lo) / n)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(max(1, math.ceil((hi - start) / step - 1e-9)) + 1)]


def nice(x: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is >= x."""
    power = 10 ** math.floor(math.log10(x)) if x > 0 else 1.0
    return next(m * power for m in (1, 2, 5, 10) if x <= m * power * (1 + 1e-9))


def labels(ticks: list[float]) -> list[str]:
    """Tick labels in one unit for the axis: 0, 5k, 10k; 0.0, 0.5, 1.0; 0, 2e-07, 4e-07."""
    step, top = ticks[1] - ticks[0], max(abs(t) for t in ticks)
    div, suffix = next(((d, s) for d, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if top >= max(d, 1e4)), (1.0, ""))
    decimals = max(0, -math.floor(math.log10(step / div) + 1e-9))
    return ["0" if abs(t) < step * 1e-6 else f"{t / div:.{decimals}f}{suffix}" if decimals <= 4 else f"{t:.2g}"
            for t in ticks]


def time_axis(ts: Sequence[float], *more: Sequence[float]) -> tuple[float, str]:
    """The divisor and label of a time axis (seconds since the start) long enough for every series given."""
    span = max((max(s, default=0.0) for s in (ts, *more)), default=0.0)
    unit, div = ("h", 3600) if span >= 7200 else ("min", 60) if span >= 120 else ("s", 1)
    return div, f"time since start ({unit})"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
