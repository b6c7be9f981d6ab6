"""Static SVG bar charts for the report, written as text: horizontal bars (stacked, or floating for a timeline)
and vertical bars over bins (a histogram).

The report's five charts are bars, ticks, labels and a legend; drawing them here costs milliseconds and no
memory to speak of, where a plotting library's import and layout cost seconds of every run that changes the
summary (BENCHMARKS.md). The same data give the same bytes; text is SVG text in a generic sans-serif font.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

__all__ = ["COLOURS", "Row", "Segment", "Series", "clean", "columns", "hbars", "nice_ticks", "notice"]

COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
WIDTH = 800
FONT = 12  # px; a character is about 0.6 of it wide in a sans-serif font
LABEL_CHARS = 40  # a longer category label is cut with an ellipsis


@dataclass(frozen=True)
class Segment:
    """A piece of a horizontal bar: from `start` for `length`, in the value axis's units."""

    start: float
    length: float
    colour: str


@dataclass(frozen=True)
class Row:
    """One category of a horizontal bar chart: its label, its bar's segments, a note after the bar."""

    label: str
    segments: tuple[Segment, ...]
    note: str = ""


@dataclass(frozen=True)
class Series:
    """A named, coloured series of values (one per bin of a histogram), for stacking and the legend."""

    label: str
    values: tuple[float, ...]
    colour: str


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `high` (steps of 1, 2 or 5 times a power of ten)."""
    raw = high / count if high > 0 and math.isfinite(high) else 0.0
    if not raw > 0:
        return [0.0, 1.0]
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    n = math.ceil(high / step - 1e-9)
    return [i * step for i in range(n + 1)]


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean(text: str) -> str:
    """Text without the characters XML 1.0 forbids (control characters, lone surrogates, U+FFFE/FFFF),
    each replaced by U+FFFD: a label or an answer from a file must not make a page unreadable or unwritable."""
    return _NOT_XML.sub("\ufffd", text)


def _e(text: str) -> str:
    return html.escape(clean(text), quote=True)


def _n(value: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _tick(value: float, step: float) -> str:
    if step >= 1:
        return f"{value:,.0f}"
    decimals = min(6, max(0, -math.floor(math.log10(step))))
    return f"{value:.{decimals}f}"


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = FONT, colour: str = "#222") -> str:
    return f'<text x="{_n(x)}" y="{_n(y)}" font-size="{size}" text-anchor="{anchor}" fill="{colour}">{_e(text)}</text>'


def _chars(text: str) -> float:
    """Width of text in pixels, estimated (no font metrics: the same bytes on every machine)."""
    return len(text) * FONT * 0.6


def _axes(left: float, top: float, plot_w: float, plot_h: float) -> str:
    """The value axis's and the category axis's lines."""
    x0, x1, y0, y1 = _n(left), _n(left + plot_w), _n(top), _n(top + plot_h)
    return f'<path d="M{x0} {y0}V{y1}H{x1}" fill="none" stroke="#444"/>'


def _cut(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "\u2026"


def _svg(width: float, height: float, title: str, body: list[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" font-family="sans-serif">'
    )
    return "\n".join(
        [
            head,
            f"<title>{_e(title)}</title>",
            f'<rect width="{_n(width)}" height="{_n(height)}" fill="#fff"/>',
            _text(width / 2, 22, title, "middle", FONT + 2),
            *body,
            "</svg>",
            "",
        ]
    )


def _legend_rows(items: list[tuple[str, str]], width: float) -> list[list[tuple[str, str, float]]]:
    """The legend's items by line, each with its width: as many as fit a line (at least one)."""
    lines: list[list[tuple[str, str, float]]] = [[]]
    used = 0.0
    for label, colour in items:
        w = 18 + _chars(label) + 16
        if lines[-1] and used + w > width - 40:
            lines.append([])
            used = 0.0
        lines[-1].append((label, colour, w))
        used += w
    return lines


def _legend(items: list[tuple[str, str]], y: float, width: float) -> list[str]:
    """Swatches and names in one centred line (or more when they do not fit)."""
    out = []
    for i, line in enumerate(_legend_rows(items, width)):
        x = (width - sum(w for _, _, w in line)) / 2
        yy = y + i * (FONT + 8)
        for label, colour, w in line:
            out.append(f'<rect x="{_n(x)}" y="{_n(yy - FONT + 2)}" width="12" height="12" fill="{colour}"/>')
            out.append(_text(x + 18, yy, label, size=FONT - 1))
            x += w
    return out


def _legend_lines(items: list[tuple[str, str]], width: float) -> int:
    return len(_legend_rows(items, width))


def _ylabel(x: float, cy: float, text: str) -> str:
    """The category or value axis's name, written upwards at the left edge."""
    return (
        f'<text x="{_n(x)}" y="{_n(cy)}" font-size="{FONT}" text-anchor="middle" fill="#222" '
        f'transform="rotate(-90 {_n(x)} {_n(cy)})">{_e(text)}</text>'
    )


def notice(title: str, text: str, width: float = WIDTH, height: float = 160) -> str:
    """A chart with nothing to draw: its title and why."""
    return _svg(width, height, title, [_text(width / 2, height / 2 + 10, text, "middle", colour="#666")])


def hbars(
    title: str,
    rows: list[Row],
    legend: list[tuple[str, str]],
    xlabel: str,
    ylabel: str = "",
    width: float = WIDTH,
) -> str:
    """Horizontal bars, one row per category, top to bottom; a row's segments may stack or float."""
    if not rows:
        return notice(title, "nothing to draw", width)
    row_h = max(3.0, min(24.0, 480 / len(rows)))
    labelled = row_h >= FONT
    labels = [_cut(r.label) for r in rows] if labelled else []
    left = 16 + max((_chars(label) for label in labels), default=0) + (FONT + 8 if ylabel else 0)
    right = 16 + max((_chars(r.note) for r in rows), default=0)
    left, right = min(left, width * 0.4), min(right, width * 0.3)
    top = 40
    plot_w, plot_h = width - left - right, row_h * len(rows)
    high = max((s.start + s.length for r in rows for s in r.segments), default=0.0)
    ticks = nice_ticks(high)
    scale = plot_w / ticks[-1]
    body = []
    for t in ticks:  # grid and tick labels
        x = left + t * scale
        body.append(f'<line x1="{_n(x)}" y1="{top}" x2="{_n(x)}" y2="{_n(top + plot_h)}" stroke="#e5e5e5"/>')
        body.append(_text(x, top + plot_h + FONT + 4, _tick(t, ticks[1] - ticks[0]), "middle", FONT - 1))
    bar_h = row_h * 0.75 if labelled else max(row_h - 1, 1.0)
    for i, row in enumerate(rows):
        y = top + i * row_h + (row_h - bar_h) / 2
        for s in row.segments:
            if s.length <= 0:
                continue
            body.append(
                f'<rect x="{_n(left + s.start * scale)}" y="{_n(y)}" width="{_n(max(s.length * scale, 0.5))}" '
                f'height="{_n(bar_h)}" fill="{s.colour}"/>'
            )
        mid = top + i * row_h + row_h / 2 + FONT * 0.35
        if labelled:
            body.append(_text(left - 6, mid, labels[i], "end", FONT - 1))
        if row.note:
            end = max((s.start + s.length for s in row.segments), default=0.0)
            body.append(_text(left + end * scale + 4, mid, row.note, size=FONT - 2, colour="#333"))
    body.append(_axes(left, top, plot_w, plot_h))
    y = top + plot_h + 2 * FONT + 10
    body.append(_text(left + plot_w / 2, y, xlabel, "middle"))
    if ylabel:
        body.append(_ylabel(FONT, top + plot_h / 2, ylabel))
    body += _legend(legend, y + FONT + 14, width)
    height = y + 14 + _legend_lines(legend, width) * (FONT + 8) + (0 if legend else -FONT)
    return _svg(width, height, title, body)


def columns(
    title: str,
    edges: list[float],
    series: list[Series],
    xlabel: str,
    ylabel: str,
    width: float = WIDTH,
    height: float = 340,
) -> str:
    """Vertical bars over bins (`edges` has one more value than each series), the series stacked."""
    bins = len(edges) - 1
    stacks = [sum(s.values[i] for s in series) for i in range(bins)]
    ticks = nice_ticks(max(stacks, default=0.0))
    legend = [(s.label, s.colour) for s in series]
    left, right, top = 64.0, 24.0, 40.0
    bottom = 2 * FONT + 22 + _legend_lines(legend, width) * (FONT + 8) if legend else 2 * FONT + 16
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = edges[0], edges[-1]
    xs = (plot_w / (hi - lo)) if hi > lo else 1.0
    ys = plot_h / ticks[-1]
    body = []
    step = ticks[1] - ticks[0]
    for t in ticks:
        y = top + plot_h - t * ys
        body.append(f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(left + plot_w)}" y2="{_n(y)}" stroke="#e5e5e5"/>')
        body.append(_text(left - 6, y + FONT * 0.35, _tick(t, step), "end", FONT - 1))
    for i in range(bins):
        base = 0.0
        x0, x1 = left + (edges[i] - lo) * xs, left + (edges[i + 1] - lo) * xs
        for s in series:
            v = s.values[i]
            if v > 0:
                y = top + plot_h - (base + v) * ys
                body.append(
                    f'<rect x="{_n(x0)}" y="{_n(y)}" width="{_n(max(x1 - x0 - 1, 0.5))}" height="{_n(v * ys)}" '
                    f'fill="{s.colour}"/>'
                )
            base += v
    xt = nice_ticks(hi - lo)
    for t in xt:
        if t > hi - lo + 1e-9:
            break
        x = left + t * xs
        body.append(_text(x, top + plot_h + FONT + 4, _tick(lo + t, xt[1] - xt[0]), "middle", FONT - 1))
    body.append(_axes(left, top, plot_w, plot_h))
    y = top + plot_h + 2 * FONT + 10
    body.append(_text(left + plot_w / 2, y, xlabel, "middle"))
    body.append(_ylabel(FONT + 2, top + plot_h / 2, ylabel))
    body += _legend(legend, y + FONT + 14, width)
    return _svg(width, height, title, body)
