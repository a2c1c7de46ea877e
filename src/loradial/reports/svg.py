"""Dependency-free SVG charts for the HTML report: line charts, heatmaps, stacked bars.

Hand-written SVG rather than a plotting library so that the report stays one small file, the
charts take the page's fonts and its light/dark colors (strokes and fills are CSS classes or
``var(--...)`` colors defined in the stylesheet), and hovering a point shows its value through
plain SVG ``<title>`` elements, with no JavaScript. Every string that reaches the SVG goes through
:func:`esc`.
"""

from __future__ import annotations

import html
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

_ids = itertools.count()


def esc(value: Any) -> str:
    """HTML/SVG-escape any value (text nodes and attribute values alike)."""
    return html.escape(str(value), quote=True)


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_num(v: float, digits: int = 3) -> str:
    """Short human number: 0.0002 -> '2e-4', 12000 -> '12k', 2.5 -> '2.5'."""
    if not finite(v):
        return "–"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4:
        for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                return f"{v / div:.{digits}g}{suf}"
    if 1e3 <= a < 1e4 and float(v).is_integer():
        return f"{v:.0f}"
    if a < 1e-3:
        mant, exp = f"{v:.{max(digits - 1, 0)}e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    return f"{v:.{digits}g}"


class Scale:
    """Map data values in [lo, hi] to pixels in [a, b]; kind is 'linear', 'log2' or 'log10'."""

    def __init__(self, lo: float, hi: float, a: float, b: float, kind: str = "linear"):
        self.kind, self.a, self.b = kind, a, b
        if kind != "linear":
            lo, hi = max(lo, 1e-300), max(hi, 1e-300)
        if hi <= lo:
            pad = abs(lo) * 0.05 or 1.0
            lo, hi = (lo / 2, hi * 2) if kind != "linear" else (lo - pad, hi + pad)
        self.lo, self.hi = lo, hi

    def _t(self, v: float) -> float:
        if self.kind == "log2":
            return math.log2(v)
        if self.kind == "log10":
            return math.log10(v)
        return v

    def __call__(self, v: float) -> float:
        t0, t1 = self._t(self.lo), self._t(self.hi)
        return self.a + (self._t(v) - t0) / (t1 - t0) * (self.b - self.a)

    def ticks(self, target: int = 5) -> list[float]:
        if self.kind == "log2":
            lo, hi = math.ceil(math.log2(self.lo) - 1e-9), math.floor(math.log2(self.hi) + 1e-9)
            step = max(1, math.ceil((hi - lo + 1) / 9))
            return [2.0**e for e in range(lo, hi + 1, step)] or [self.lo]
        if self.kind == "log10":
            lo, hi = math.floor(math.log10(self.lo) + 1e-9), math.ceil(math.log10(self.hi) - 1e-9)
            mults = (1, 2, 5) if hi - lo <= 2 else (1,)
            out = [m * 10.0**e for e in range(lo, hi + 1) for m in mults]
            return [t for t in out if self.lo * (1 - 1e-9) <= t <= self.hi * (1 + 1e-9)] or [self.lo]
        return nice_ticks(self.lo, self.hi, target)


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def thin(points: list, n: int = 240) -> list:
    """At most about ``n`` points, evenly strided, always keeping the last one (for long curves)."""
    if len(points) <= n:
        return points
    step = len(points) / n
    out = [points[int(i * step)] for i in range(n)]
    return out if out[-1] is points[-1] else out + [points[-1]]


def log_thin(points: list, n: int = 96) -> list:
    """Keep points at roughly log-spaced positions (for curves drawn on a log x axis)."""
    if len(points) <= n:
        return points
    keep = sorted({min(len(points) - 1, round((len(points) - 1) ** (i / (n - 1)))) for i in range(n)} | {0, len(points) - 1})
    return [points[i] for i in keep]


def padded(lo: float, hi: float, frac: float = 0.06) -> tuple[float, float]:
    pad = (hi - lo) * frac or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


@dataclass
class Series:
    """One line (and/or its markers). ``color`` is a CSS color such as 'var(--c2)'."""

    label: str
    points: list[tuple[float, float | None]]
    color: str = "var(--c0)"
    width: float = 2.0
    dash: str | None = None
    markers: bool = False
    opacity: float = 1.0
    tip: str | None = None
    fmt_y: Callable[[float], str] = fmt_num
    fmt_x: Callable[[float], str] = fmt_num
    tips: list[str] | None = None
    """Per-point marker tooltips (default: '<label>: x → y')."""
    marker_size: float = 3.6
    ring: bool = False
    """Draw markers as rings (stroke only)."""


@dataclass
class Mark:
    """A reference line: vertical at x (``axis='x'``) or horizontal at y, with a short label."""

    value: float
    label: str
    axis: str = "x"
    color: str = "var(--muted)"
    anchor: str | None = None
    """Label side: 'start' (right of / at the left end of the line) or 'end'; None picks the roomier side."""
    bottom: bool = False
    """Label at the bottom of an x mark / below a y mark (instead of top / above)."""
    in_domain: bool = False
    """For a y mark: widen the y range to show it."""


@dataclass
class Frame:
    width: int = 560
    height: int = 320
    left: int = 58
    right: int = 18
    top: int = 16
    bottom: int = 46
    extra: list[str] = field(default_factory=list)


def _open(width: int, height: int, label: str, max_width: int | None = None) -> list[str]:
    style = f' style="max-width:{max_width}px"' if max_width else ""
    return [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(label)}"{style}>',
        f"<title>{esc(label)}</title>",
    ]


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xscale: str = "linear",
    yscale: str = "linear",
    xdomain: tuple[float, float] | None = None,
    ydomain: tuple[float, float] | None = None,
    marks: Sequence[Mark] = (),
    frame: Frame | None = None,
    fmt_xtick: Callable[[float], str] = fmt_num,
    fmt_ytick: Callable[[float], str] = fmt_num,
) -> str:
    """An SVG line chart. Points with a non-finite y break the line; lines are clipped to the axes."""
    f = frame or Frame()
    xs = [x for s in series for x, y in s.points if finite(x) and finite(y) and (xscale == "linear" or x > 0)]
    ys = [y for s in series for x, y in s.points if finite(x) and finite(y) and (yscale == "linear" or y > 0)]
    xs += [m.value for m in marks if m.axis == "x" and finite(m.value)]
    ys += [m.value for m in marks if m.axis == "y" and m.in_domain and finite(m.value)]
    if xdomain is None:
        xdomain = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if ydomain is None:
        ydomain = padded(min(ys), max(ys)) if ys else (0.0, 1.0)
        if yscale != "linear":
            ydomain = (min(ys) / 1.15, max(ys) * 1.15) if ys else (0.1, 1.0)
    x0, x1, y0, y1 = f.left, f.width - f.right, f.height - f.bottom, f.top
    sx, sy = Scale(*xdomain, x0, x1, xscale), Scale(*ydomain, y0, y1, yscale)
    cid = f"clip{next(_ids)}"
    out = _open(f.width, f.height, title)
    out.append(f'<defs><clipPath id="{cid}"><rect x="{x0 - 6}" y="{y1 - 6}" width="{x1 - x0 + 12}" height="{y0 - y1 + 12}"/></clipPath></defs>')
    out += _axes(sx, sy, f, xlabel, ylabel, fmt_xtick, fmt_ytick)
    for m in marks:
        out += _mark(m, sx, sy, f)
    body, dots = [], []
    for s in series:
        segs, cur = [], []
        for x, y in s.points:
            ok = finite(x) and finite(y) and (xscale == "linear" or x > 0) and (yscale == "linear" or y > 0)
            if ok:
                cur.append((sx(x), sy(y)))
            elif cur:
                segs.append(cur)
                cur = []
        if cur:
            segs.append(cur)
        d = " ".join("M" + " L".join(f"{px:.1f},{py:.1f}" for px, py in seg) for seg in segs if len(seg) > 1)
        style = f"stroke:{s.color};stroke-width:{s.width}" + (f";stroke-dasharray:{s.dash}" if s.dash else "")
        if s.opacity < 1:
            style += f";stroke-opacity:{s.opacity}"
        if d and s.width > 0:
            body.append(f'<path class="line" d="{d}" style="{style}"><title>{esc(s.tip or s.label)}</title></path>')
        if s.markers:
            paint = f"fill:none;stroke:{s.color};stroke-width:2.2" if s.ring else f"fill:{s.color}"
            if s.opacity < 1:
                paint += f";fill-opacity:{s.opacity}"
            for i, (x, y) in enumerate(s.points):
                if finite(x) and finite(y) and (xscale == "linear" or x > 0) and (yscale == "linear" or y > 0):
                    tip = s.tips[i] if s.tips and i < len(s.tips) else f"{s.label}: {s.fmt_x(x)} → {s.fmt_y(y)}"
                    dots.append(
                        f'<circle class="dot{" ring" if s.ring else ""}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" '
                        f'r="{s.marker_size}" style="{paint}"><title>{esc(tip)}</title></circle>'
                    )
    out.append(f'<g clip-path="url(#{cid})">' + "".join(body) + "".join(dots) + "</g>")
    out += f.extra
    out.append("</svg>")
    return "\n".join(out)


def _axes(sx: Scale, sy: Scale, f: Frame, xlabel: str, ylabel: str, fx: Callable, fy: Callable) -> list[str]:
    x0, x1, y0, y1 = f.left, f.width - f.right, f.height - f.bottom, f.top
    out = ['<g class="axes">']
    for t in sy.ticks():
        py = sy(t)
        if y1 - 0.5 <= py <= y0 + 0.5:
            out.append(f'<line class="gridline" x1="{x0}" x2="{x1}" y1="{py:.1f}" y2="{py:.1f}"/>')
            out.append(f'<text class="tick" x="{x0 - 6}" y="{py:.1f}" text-anchor="end" dominant-baseline="middle">{esc(fy(t))}</text>')
    for t in sx.ticks(6):
        px = sx(t)
        if x0 - 0.5 <= px <= x1 + 0.5:
            out.append(f'<line class="gridline" x1="{px:.1f}" x2="{px:.1f}" y1="{y1}" y2="{y0}"/>')
            out.append(f'<text class="tick" x="{px:.1f}" y="{y0 + 16}" text-anchor="middle">{esc(fx(t))}</text>')
    out.append(f'<line class="axis" x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/>')
    out.append(f'<text class="label" x="{(x0 + x1) / 2:.1f}" y="{f.height - 8}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(
        f'<text class="label" transform="translate(14,{(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>'
    )
    out.append("</g>")
    return out


def _mark(m: Mark, sx: Scale, sy: Scale, f: Frame) -> list[str]:
    x0, x1, y0, y1 = f.left, f.width - f.right, f.height - f.bottom, f.top
    if not finite(m.value):
        return []
    if m.axis == "x":
        px = sx(m.value)
        if not x0 - 1 <= px <= x1 + 1:
            return []
        anchor = m.anchor or ("end" if px > (x0 + x1) / 2 else "start")
        dx = -4 if anchor == "end" else 4
        ty = y0 - 6 if m.bottom else y1 + 11
        out = [f'<line class="mark" x1="{px:.1f}" x2="{px:.1f}" y1="{y1}" y2="{y0}" style="stroke:{m.color}"/>']
        if m.label:
            out.append(f'<text class="marklabel" x="{px + dx:.1f}" y="{ty}" text-anchor="{anchor}" style="fill:{m.color}">{esc(m.label)}</text>')
        return out
    py = sy(m.value)
    if not y1 - 1 <= py <= y0 + 1:
        return []
    tx, anchor = (x0 + 4, "start") if m.anchor == "start" else (x1 - 4, "end")
    ty = py + 13 if m.bottom else py - 5
    out = [f'<line class="mark" x1="{x0}" x2="{x1}" y1="{py:.1f}" y2="{py:.1f}" style="stroke:{m.color}"/>']
    if m.label:
        out.append(f'<text class="marklabel" x="{tx}" y="{ty:.1f}" text-anchor="{anchor}" style="fill:{m.color}">{esc(m.label)}</text>')
    return out


# Viridis anchors (matplotlib, CC0): perceptually uniform and colorblind-safe; used for heatmap cells.
_VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]


def ramp(t: float) -> str:
    """Viridis color at t in [0, 1] (linear interpolation between anchors)."""
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    a, b, w = _VIRIDIS[i], _VIRIDIS[i + 1], t - i
    rgb = [round(int(a[k : k + 2], 16) * (1 - w) + int(b[k : k + 2], 16) * w) for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def heatmap(
    values: Sequence[Sequence[float | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    xlabel: str,
    fmt: Callable[[float], str] = lambda v: f"{v:.0f}",
    tip: Callable[[int, int, float], str] | None = None,
    cell: int = 64,
    label_width: int = 130,
    vmin: float | None = None,
) -> str:
    """Rows × columns of colored cells (viridis from ``vmin`` or the smallest value to the largest),
    with the value printed inside."""
    vals = [v for row in values for v in row if finite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if vmin is not None and vals:
        lo = min(vmin, lo)
    cw = max(16, min(cell, int(900 / max(len(col_labels), 1))))
    ch = 26
    width, height = label_width + cw * len(col_labels) + 10, 10 + ch * len(row_labels) + 44
    out = _open(width, height, title, max_width=width)
    for i, (rl, row) in enumerate(zip(row_labels, values)):
        y = 6 + i * ch
        out.append(f'<text class="tick" x="{label_width - 8}" y="{y + ch / 2:.1f}" text-anchor="end" dominant-baseline="middle">{esc(rl)}</text>')
        for j, v in enumerate(row):
            x = label_width + j * cw
            if not finite(v):
                out.append(f'<rect class="nocell" x="{x + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" rx="3"/>')
                continue
            t = (v - lo) / (hi - lo) if hi > lo else 0.5
            tip_text = tip(i, j, v) if tip else f"{rl} · {col_labels[j]}: {fmt(v)}"
            out.append(
                f'<rect x="{x + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" rx="3" style="fill:{ramp(t)}">'
                f"<title>{esc(tip_text)}</title></rect>"
            )
            if cw >= 24:
                ink = "#111" if t > 0.55 else "#fff"
                out.append(
                    f'<text class="cellval" x="{x + cw / 2:.1f}" y="{y + ch / 2:.1f}" text-anchor="middle" '
                    f'dominant-baseline="central" style="fill:{ink}">{esc(fmt(v))}</text>'
                )
    ybase = 6 + ch * len(row_labels)
    every = max(1, math.ceil(len(col_labels) * 22 / (cw * len(col_labels) or 1)))
    for j, cl in enumerate(col_labels):
        if j % every == 0 or j == len(col_labels) - 1:
            out.append(f'<text class="tick" x="{label_width + j * cw + cw / 2:.1f}" y="{ybase + 15}" text-anchor="middle">{esc(cl)}</text>')
    out.append(f'<text class="label" x="{label_width + cw * len(col_labels) / 2:.1f}" y="{ybase + 36}" text-anchor="middle">{esc(xlabel)}</text>')
    if vals:  # color key: a viridis bar from the smallest to the largest value
        gid, kx, kw = f"heat{next(_ids)}", 10, min(110, label_width - 30)
        stops = "".join(f'<stop offset="{i / (len(_VIRIDIS) - 1):.3f}" stop-color="{c}"/>' for i, c in enumerate(_VIRIDIS))
        out.append(f'<defs><linearGradient id="{gid}">{stops}</linearGradient></defs>')
        out.append(f'<rect x="{kx}" y="{ybase + 8}" width="{kw}" height="9" rx="2" fill="url(#{gid})"/>')
        out.append(f'<text class="tick" x="{kx}" y="{ybase + 30}">{esc(fmt(lo))}</text>')
        out.append(f'<text class="tick" x="{kx + kw}" y="{ybase + 30}" text-anchor="end">{esc(fmt(hi))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def stacked_bars(
    bars: Sequence[tuple[str, dict[str, float]]],
    keys: Sequence[tuple[str, str, str]],
    *,
    title: str,
    xlabel: str,
    fmt: Callable[[float], str] = fmt_num,
    width: int = 900,
    label_width: int = 190,
    unit: tuple[float, str] | None = None,
) -> str:
    """Horizontal stacked bars. ``keys`` = [(key, display name, css color)], in stacking order.

    ``unit`` = (divisor, name) puts the axis ticks at round numbers of that unit (e.g. (2**20, 'MiB')).
    """
    bh, gap = 22, 10
    right = 80
    height = 12 + len(bars) * (bh + gap) + 40
    totals = [sum(v for v in parts.values() if finite(v) and v > 0) for _, parts in bars]
    hi = max(totals) if totals and max(totals) > 0 else 1.0
    x0, x1 = label_width, width - right
    sx = Scale(0, hi * 1.02, x0, x1)
    out = _open(width, height, title, max_width=width + 200)
    ybase = 8 + len(bars) * (bh + gap)
    out.append('<g class="axes">')
    div, uname = unit or (1.0, "")
    for t in nice_ticks(0, hi * 1.02 / div, 6):
        px = sx(t * div)
        text = f"{t:g} {uname}" if unit else fmt(t)
        out.append(f'<line class="gridline" x1="{px:.1f}" x2="{px:.1f}" y1="4" y2="{ybase}"/>')
        out.append(f'<text class="tick" x="{px:.1f}" y="{ybase + 15}" text-anchor="middle">{esc(text)}</text>')
    out.append(f'<text class="label" x="{(x0 + x1) / 2:.1f}" y="{height - 6}" text-anchor="middle">{esc(xlabel)}</text></g>')
    for i, ((label, parts), total) in enumerate(zip(bars, totals)):
        y = 8 + i * (bh + gap)
        out.append(f'<text class="tick" x="{x0 - 8}" y="{y + bh / 2:.1f}" text-anchor="end" dominant-baseline="middle">{esc(label)}</text>')
        acc = 0.0
        for key, name, color in keys:
            v = parts.get(key)
            if not finite(v) or v <= 0:
                continue
            a, b = sx(acc), sx(acc + v)
            share = v / total if total else 0
            out.append(
                f'<rect class="seg" x="{a:.1f}" y="{y}" width="{max(b - a, 0.8):.1f}" height="{bh}" style="fill:{color}">'
                f"<title>{esc(label)} · {esc(name)}: {esc(fmt(v))} ({share:.0%})</title></rect>"
            )
            acc += v
        out.append(f'<text class="total" x="{sx(acc) + 6:.1f}" y="{y + bh / 2:.1f}" dominant-baseline="middle">{esc(fmt(total))}</text>')
    out.append("</svg>")
    return "\n".join(out)
