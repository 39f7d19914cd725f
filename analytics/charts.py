"""Charts drawn on the server as SVG: the same markup goes into the report page and its PDF (WeasyPrint renders
SVG), so what an analyst forwards is what they saw. Plain functions of data → SVG text, escaped.

Each chart is as wide as its card (width 100 %, the height following the viewBox's proportions); `width` and
`height` set the drawing's proportions and so how large its text reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape

from django.utils.safestring import SafeString, mark_safe

PALETTE = ["#3b5bdb", "#2f9e44", "#f08c00", "#c92a2a", "#7048e8", "#0c8599", "#868e96"]
# Presentation attributes rather than CSS in style="": WeasyPrint's SVG renderer reads these.
FONT = 'font-family="Helvetica,Arial,sans-serif" font-size="11" fill="#475467"'
TITLE = 'font-family="Helvetica,Arial,sans-serif" font-size="12" font-weight="bold" fill="#1d2330"'


def _svg_open(width: int, height: int, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%"'
        f' preserveAspectRatio="xMinYMin meet" style="display:block;width:100%;height:auto"'
        f' role="img" aria-label="{escape(title or "chart")}">'
    )


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def _label(at: str, span_seconds: float) -> str:
    moment = datetime.fromisoformat(at)
    if span_seconds <= 2 * 86400:
        return moment.strftime("%H:%M")
    return moment.strftime("%d %b")


def line_chart(
    points: Sequence[Mapping[str, object]],
    series: Sequence[tuple[str, str]],
    *,
    width: int = 960,
    height: int = 260,
    title: str = "",
) -> SafeString:
    """Lines over time: `points` are {"at": iso, name: value…}; `series` is [(key, label)]."""
    left, right, top, bottom = 44, 12, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        _svg_open(width, height, title),
        f'<text x="{left}" y="14" {TITLE}>{escape(title)}</text>',
    ]
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {FONT}>No data yet</text>')
        return mark_safe("".join(parts) + "</svg>")  # noqa: S308 - built from escaped parts
    peak = _nice_max(max(float(p.get(key, 0) or 0) for p in points for key, _ in series))
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaecf0"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{peak * i / 4:g}</text>')
    count = len(points)
    span = (
        (datetime.fromisoformat(str(points[-1]["at"])) - datetime.fromisoformat(str(points[0]["at"]))).total_seconds()
        if count > 1
        else 0
    )

    def x(index: int) -> float:
        return left + (plot_w * index / (count - 1) if count > 1 else plot_w / 2)

    for index in sorted({0, count // 2, count - 1}):
        parts.append(
            f'<text x="{x(index):.1f}" y="{height - 18}" text-anchor="middle" {FONT}>'
            f"{escape(_label(str(points[index]['at']), span))}</text>"
        )
    for number, (key, label) in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        coords = " ".join(
            f"{x(i):.1f},{top + plot_h - plot_h * float(p.get(key, 0) or 0) / peak:.1f}" for i, p in enumerate(points)
        )
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        if count <= 60:  # few points (a short campaign): dots, so a single minute still shows
            for pair in coords.split():
                cx, cy = pair.split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>')
        legend_x = left + number * 110
        parts.append(f'<rect x="{legend_x}" y="{height - 10}" width="10" height="4" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{height - 5}" {FONT}>{escape(label)}</text>')
    return mark_safe("".join(parts) + "</svg>")  # noqa: S308 - built from escaped parts


def bar_chart(
    bars: Sequence[tuple[str, float, tuple[float, float] | None]],
    *,
    width: int = 960,
    title: str = "",
    percent: bool = True,
) -> SafeString:
    """Horizontal bars, one per (label, value, optional (low, high) interval) — e.g. a rate per variant."""
    row, left, top = 28, 120, 24
    height = top + row * max(len(bars), 1) + 12
    plot_w = width - left - 70
    peak = max([hi for _, _, ci in bars if ci for hi in (ci[1],)] + [v for _, v, _ in bars] + [0.0001])
    peak = min(1.0, _nice_max(peak * 100) / 100) if percent else _nice_max(peak)
    parts = [
        _svg_open(width, height, title),
        f'<text x="4" y="14" {TITLE}>{escape(title)}</text>',
    ]
    for number, (label, value, interval) in enumerate(bars):
        y = top + number * row
        w = plot_w * value / peak if peak else 0
        colour = PALETTE[number % len(PALETTE)]
        text = f"{value:.1%}" if percent else f"{value:g}"
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" {FONT}>{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{max(w, 1):.1f}" height="16" fill="{colour}" rx="2"/>')
        if interval:
            lo, hi = (left + plot_w * bound / peak for bound in interval)
            parts.append(f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{y + 12}" y2="{y + 12}" stroke="#1d2330"/>')
            for end in (lo, hi):
                parts.append(f'<line x1="{end:.1f}" x2="{end:.1f}" y1="{y + 7}" y2="{y + 17}" stroke="#1d2330"/>')
        parts.append(f'<text x="{left + plot_w + 6}" y="{y + 15}" {FONT}>{escape(text)}</text>')
    return mark_safe("".join(parts) + "</svg>")  # noqa: S308 - built from escaped parts
