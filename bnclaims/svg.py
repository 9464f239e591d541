"""Plots as SVG text, by pure functions (no plotting library).

* ``line_plot``   : curves over steps, each with its 95 % confidence band;
* ``points_plot`` : markers with 95 % error bars over a sweep (dodged when several series);
* ``interval_strip``: a small one-line plot of an estimate, its interval, a threshold and
  per-seed values (used beside verdict conditions and metrics).

Axes get "nice" ticks (1-2-5 steps on linear axes, decades 10^k with minor ticks on log
axes), thinned until their labels do not overlap (text extents estimated with
``text_width``). ``None`` values are gaps. Each series gets a colour from the Okabe–Ito
palette chosen by a stable hash of its label, so a condition has the same colour on every
plot of the site, plus a dash pattern / marker shape (by position in the plot) so colour is
never the only cue.
All text is escaped; the output is deterministic (coordinates rounded to 0.1 px).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

# Okabe & Ito (2008) colour-blind-safe palette, without yellow (too faint on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
PALETTE_NAMES = ("blue", "vermillion", "green", "purple", "orange", "sky blue", "black")
DASHES = ("", "7 3", "2 2.5", "8 3 2 3", "4 4", "1 3", "10 2")
DASH_NAMES = ("solid", "dashed", "dotted", "dash-dot", "long-dashed", "sparse-dotted", "long-dash")
MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down", "plus", "cross")

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"
AXIS_COLOR = "#444"
GRID_COLOR = "#e3e3e3"
TICK_SIZE = 11
LABEL_SIZE = 12
TITLE_SIZE = 14
TITLE_BOLD = 1.12   # titles are font-weight 600: measured in Chromium (DejaVu Sans) 8 % wider than text_width's estimate

Number = float | None

# ---------------------------------------------------------------------------- text


def text_width(text: str, size: float) -> float:
    """Approximate rendered width of ``text`` in px at font ``size`` (sans-serif; errs wide)."""
    width = 0.0
    for ch in text:
        if ch.isdigit():
            width += 0.64
        elif ch in " ":
            width += 0.32
        elif ch in ".,:;'|!il":
            width += 0.32
        elif ch in "−×⁻⁰¹²³⁴⁵⁶⁷⁸⁹":
            width += 0.84 if ch in "−×" else 0.42
        elif ch.isupper() or ch in "mwMW%":
            width += 0.74
        else:
            width += 0.6
    return width * size


def _e(text: str) -> str:
    return escape(str(text), quote=True)


def _n(value: float) -> str:
    """A coordinate, rounded so output is stable and compact."""
    text = f"{value:.1f}"
    text = text[:-2] if text.endswith(".0") else text
    return "0" if text == "-0" else text


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def _minus(text: str) -> str:
    return text.replace("-", "−")


def power_of_ten(k: int) -> str:
    return "10" + str(k).translate(_SUPERSCRIPT)


def format_number(x: float | None, digits: int = 3) -> str:
    """Compact display of a number: 0.0123, 4.56, 1234, 1.2×10⁻⁵; None as a dash."""
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    magnitude = abs(x)
    if 1e-3 <= magnitude < 1e6:
        text = f"{x:.{digits}g}"
        if "e" in text:
            text = f"{x:.0f}"
        return _minus(text)
    exponent = math.floor(math.log10(magnitude))
    mantissa = x / 10 ** exponent
    if round(abs(mantissa), digits - 1) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    mant = f"{mantissa:.{digits}g}"
    if mant in ("1", "-1"):
        return _minus(mant[:-1]) + power_of_ten(exponent)
    return _minus(mant) + "×" + power_of_ten(exponent)


# ---------------------------------------------------------------------------- colours


def color_index(label: str) -> int:
    """Stable palette index of a series label (same label, same colour, on every page)."""
    digest = hashlib.sha256(label.strip().casefold().encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % len(PALETTE)


# Pairs that are distinct but close (blue/sky blue, vermillion/orange): avoided together when possible.
_SIMILAR = {0: 5, 5: 0, 1: 4, 4: 1}


def assign_styles(labels: Sequence[str]) -> list[int]:
    """Palette index per label: its stable hash, moved to the next free colour on a collision
    (preferring one that is not close to a colour already used in the same plot)."""
    used: set[int] = set()
    out = []
    for label in labels:
        index = color_index(label)
        for allow_similar in (False, True):
            probe = index
            for _ in range(len(PALETTE)):
                if probe not in used and (allow_similar or _SIMILAR.get(probe) not in used):
                    break
                probe = (probe + 1) % len(PALETTE)
            else:
                continue
            index = probe
            break
        used.add(index)
        out.append(index)
    return out


# ---------------------------------------------------------------------------- axes


@dataclass(frozen=True)
class Axis:
    lo: float
    hi: float
    log: bool
    ticks: tuple[tuple[float, str], ...]  # (value, label); label "" = unlabelled major tick
    minor: tuple[float, ...] = ()

    def padded(self, fraction: float) -> "Axis":
        """The same ticks on a domain widened by ``fraction`` of its span at each end."""
        if self.log:
            a, b = math.log10(self.lo), math.log10(self.hi)
            pad = (b - a) * fraction
            return Axis(10 ** (a - pad), 10 ** (b + pad), True, self.ticks, self.minor)
        pad = (self.hi - self.lo) * fraction
        return Axis(self.lo - pad, self.hi + pad, False, self.ticks, self.minor)

    def fraction(self, value: float) -> float:
        if self.log:
            return (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (value - self.lo) / (self.hi - self.lo)


def nice_step(span: float, count: int) -> float:
    """The 1-2-5 step giving about ``count`` intervals over ``span``."""
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw * (1 - 1e-9):
            return factor * power
    return 10 * power


def _tick_label(value: float, step: float, use_k: bool) -> str:
    if abs(value) < step * 1e-6:
        return "0"
    if use_k:
        return _minus(f"{value / 1000:g}") + "k"
    if step < 1e-4 or max(abs(value), step) >= 1e6:
        return format_number(value, 3)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return _minus(f"{value:.{decimals}f}")


def _fits(labels: list[str], positions: list[float], horizontal: bool, size: float) -> bool:
    """True when no two adjacent labels overlap (with a small gap)."""
    gap = 6.0
    for (a, pa), (b, pb) in zip(zip(labels, positions), zip(labels[1:], positions[1:])):
        if not a or not b:
            continue
        need = (text_width(a, size) + text_width(b, size)) / 2 + gap if horizontal else size + 3
        if abs(pb - pa) < need:
            return False
    return True


def _expand(lo: float, hi: float, log: bool) -> tuple[float, float]:
    if hi > lo:
        return lo, hi
    if log:
        return lo / math.sqrt(10), hi * math.sqrt(10)
    pad = abs(lo) * 0.1 or 1.0
    return lo - pad, hi + pad


def linear_axis(lo: float, hi: float, length: float, horizontal: bool) -> Axis:
    lo, hi = _expand(lo, hi, False)
    target = max(2, min(10, int(length // (70 if horizontal else 45))))
    for count in range(target, 0, -1):
        step = nice_step(hi - lo, count)
        start, stop = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        a, b = start * step, stop * step
        values = [i * step for i in range(start, stop + 1)]
        use_k = b >= 10_000 and step >= 1000 and all(abs(v) % 1000 < 1e-6 for v in values)
        labels = [_tick_label(v, step, use_k) for v in values]
        positions = [(v - a) / (b - a) * length for v in values]
        if _fits(labels, positions, horizontal, TICK_SIZE) or count == 1:
            return Axis(a, b, False, tuple(zip(values, labels)))
    raise AssertionError("unreachable")


def log_axis(lo: float, hi: float, length: float, horizontal: bool) -> Axis:
    """Decades 10^k as major ticks and 2..9 x 10^k as minor ones, on the data's own range
    (so 2..1024 does not waste a decade); 2 and 5 are labelled too when few decades show."""
    lo, hi = _expand(lo, hi, True)
    if hi / lo < 3:  # less than half a decade: widen around the middle so the axis has ticks
        middle = math.sqrt(lo * hi)
        lo, hi = middle / math.sqrt(3), middle * math.sqrt(3)
    log_lo, log_hi = math.log10(lo), math.log10(hi)
    k_lo, k_hi = math.floor(log_lo + 1e-9), math.ceil(log_hi - 1e-9)

    def inside(value: float) -> bool:
        return log_lo - 1e-9 <= math.log10(value) <= log_hi + 1e-9

    def position(value: float) -> float:
        return (math.log10(value) - log_lo) / (log_hi - log_lo) * length

    decades = [k for k in range(k_lo, k_hi + 1) if inside(10.0 ** k)]
    plain = all(-3 <= k <= 4 for k in range(k_lo, k_hi + 1))
    minor_all = [m * 10.0 ** k for k in range(k_lo, k_hi + 1) for m in range(2, 10)]
    minor = tuple(v for v in minor_all if inside(v)) if k_hi - k_lo <= 8 else ()
    if len(decades) <= 2:
        # a decade or two: label 2 and 5 as well (and 3 if still sparse), so the axis reads easily
        for extra, enough in (((2, 5), 3), ((2, 3, 5), 3), ((2, 3, 4, 5, 6, 7, 8, 9), 3), ((2, 5), 2)):
            values = sorted(v for v in [10.0 ** k for k in range(k_lo, k_hi + 1)]
                            + [m * 10.0 ** k for k in range(k_lo, k_hi + 1) for m in extra] if inside(v))
            labels = [format_number(v, 3) for v in values]
            if len(values) >= enough and _fits(labels, [position(v) for v in values], horizontal, TICK_SIZE):
                return Axis(lo, hi, True, tuple(zip(values, labels)), tuple(m for m in minor if m not in values))
    values = [10.0 ** k for k in decades]
    for every in (1, 2, 3, 4, 5, 10, 20, 50):
        labels = [(format_number(v, 3) if plain else power_of_ten(k)) if (k - decades[0]) % every == 0 else ""
                  for v, k in zip(values, decades)]
        if _fits(labels, [position(v) for v in values], horizontal, TICK_SIZE):
            return Axis(lo, hi, True, tuple(zip(values, labels)), minor)
    return Axis(lo, hi, True, tuple((v, "") for v in values), minor)


def make_axis(values: Sequence[float], scale: str, length: float, horizontal: bool) -> Axis:
    finite = [v for v in values if v is not None and math.isfinite(v) and (scale != "log" or v > 0)]
    if not finite:
        finite = [1.0, 10.0] if scale == "log" else [0.0, 1.0]
    lo, hi = min(finite), max(finite)
    return log_axis(lo, hi, length, horizontal) if scale == "log" else linear_axis(lo, hi, length, horizontal)


# ---------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class Series:
    """One curve or set of points: x, mean y and (optionally) the 95 % interval per index."""

    label: str
    x: tuple[Number, ...]
    y: tuple[Number, ...]
    low: tuple[Number, ...] | None = None
    high: tuple[Number, ...] | None = None


def _ok(value: Number, log: bool) -> bool:
    return value is not None and math.isfinite(value) and (not log or value > 0)


def _runs(indices: list[int]) -> list[list[int]]:
    """Split sorted indices into runs of consecutive ones (None values are gaps between runs)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _wrap(text: str, width: float, size: float) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if line and text_width(candidate, size) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines or [""]


def _fit(text: str, width: float, size: float) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` px; the full text stays in the title/desc."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "…", size) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _marker(kind: str, x: float, y: float, color: str, r: float = 3.6) -> str:
    if kind == "circle":
        return f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}" fill="{color}"/>'
    if kind == "square":
        s = r * 0.9
        return f'<rect x="{_n(x - s)}" y="{_n(y - s)}" width="{_n(2 * s)}" height="{_n(2 * s)}" fill="{color}"/>'
    if kind in ("triangle", "triangle-down"):
        d = 1 if kind == "triangle" else -1
        pts = [(x, y - d * r * 1.2), (x - r * 1.1, y + d * r * 0.8), (x + r * 1.1, y + d * r * 0.8)]
        return f'<polygon points="{" ".join(f"{_n(px)},{_n(py)}" for px, py in pts)}" fill="{color}"/>'
    if kind == "diamond":
        pts = [(x, y - r * 1.3), (x + r, y), (x, y + r * 1.3), (x - r, y)]
        return f'<polygon points="{" ".join(f"{_n(px)},{_n(py)}" for px, py in pts)}" fill="{color}"/>'
    if kind == "plus":
        return (f'<path d="M{_n(x - r)} {_n(y)}H{_n(x + r)}M{_n(x)} {_n(y - r)}V{_n(y + r)}" '
                f'stroke="{color}" stroke-width="2.2"/>')
    return (f'<path d="M{_n(x - r)} {_n(y - r)}L{_n(x + r)} {_n(y + r)}M{_n(x - r)} {_n(y + r)}L{_n(x + r)} {_n(y - r)}" '
            f'stroke="{color}" stroke-width="2.2"/>')


def _dash(position: int) -> str:
    return DASHES[position % len(DASHES)]


def _dash_name(position: int) -> str:
    return DASH_NAMES[position % len(DASH_NAMES)]


def _marker_kind(position: int) -> str:
    return MARKERS[position % len(MARKERS)]


def _describe(series: Sequence[Series], styles: list[int], kind: str, xlabel: str, ylabel: str,
              note: str, x_axis: Axis, y_axis: Axis) -> str:
    # styles[k] is the colour index; the dash pattern / marker shape is the series' position k
    what = "Line plot with shaded 95% confidence bands" if kind == "line" else \
        "Points with 95% confidence error bars"
    parts = [f"{what} of {ylabel or 'value'} against {xlabel or 'index'}"
             f"{' (log scale)' if x_axis.log else ''}."]
    for k, (s, style) in enumerate(zip(series, styles)):
        valid = [(x, y) for x, y in zip(s.x, s.y) if _ok(x, x_axis.log) and _ok(y, y_axis.log)]
        look = _dash_name(k) + " line" if kind == "line" else _marker_kind(k) + " markers"
        if not valid:
            parts.append(f"{s.label} ({PALETTE_NAMES[style]}, {look}): no data.")
            continue
        gaps = len(valid) < len(s.y)
        parts.append(
            f"{s.label} ({PALETTE_NAMES[style]}, {look}): {len(valid)} points, "
            f"from {format_number(valid[0][1])} at x = {format_number(valid[0][0])} "
            f"to {format_number(valid[-1][1])} at x = {format_number(valid[-1][0])}"
            f"{', with gaps where values are missing' if gaps else ''}."
        )
    if note:
        parts.append(note)
    return " ".join(parts)


MAX_POINTS = 1000  # longer series are thinned (a plot is ~600 px wide; pages stay light)


def _thin(s: Series) -> Series:
    """Every k-th point of a long series; a window holding a missing value stays a gap."""
    n = min(len(s.x), len(s.y))
    if n <= MAX_POINTS:
        return s
    stride = math.ceil(n / MAX_POINTS)
    starts = list(range(0, n, stride))

    def pick(values):
        if values is None:
            return None
        return tuple(None if any(v is None for v in values[i:i + stride]) else values[i] for i in starts)

    return Series(s.label, pick(s.x), pick(s.y), pick(s.low), pick(s.high))


def _plot(kind: str, series: Sequence[Series], *, title: str, xlabel: str, ylabel: str, xscale: str,
          yscale: str, note: str, id_prefix: str, width: float, height: float) -> str:
    series = [_thin(s) for s in series]
    styles = assign_styles([s.label for s in series])
    x_log, y_log = xscale == "log", yscale == "log"
    # layout: title lines, legend rows, plot area, x tick labels and label
    title_lines = _wrap(title, width - 24, TITLE_SIZE * TITLE_BOLD)
    top = 10 + len(title_lines) * (TITLE_SIZE + 5)
    legend_items = [(s.label, st) for s, st in zip(series, styles)]
    legend_rows: list[list[tuple[str, int, float]]] = [[]]
    row_width = 0.0
    for label, style in legend_items:
        shown = label if text_width(label, LABEL_SIZE) < width - 80 else label[:60] + "…"
        item_width = 34 + text_width(shown, LABEL_SIZE) + 18
        if legend_rows[-1] and row_width + item_width > width - 20:
            legend_rows.append([])
            row_width = 0.0
        legend_rows[-1].append((shown, len(legend_rows[-1]) + sum(len(r) for r in legend_rows[:-1]), row_width))
        row_width += item_width
    legend_top = top + 4
    top = legend_top + len(legend_rows) * (LABEL_SIZE + 8) + 6

    xs = [x for s in series for x in s.x]
    ys = [v for s in series for v in (list(s.y) + list(s.low or ()) + list(s.high or ()))]
    bottom = height - (TICK_SIZE + 10) - (LABEL_SIZE + 10 if xlabel else 0) - 4
    y_axis = make_axis(ys, yscale, bottom - top, False)
    tick_width = max((text_width(lbl, TICK_SIZE) for _, lbl in y_axis.ticks), default=10)
    left = 10 + (LABEL_SIZE + 8 if ylabel else 0) + tick_width + 8
    right = width - 18
    x_axis = make_axis(xs, xscale, right - left, True)
    if kind == "points":  # markers on the frame would be half hidden
        x_axis, y_axis = x_axis.padded(0.04), y_axis.padded(0.04)

    def px(v: float) -> float:
        return left + x_axis.fraction(v) * (right - left)

    def py(v: float) -> float:
        return bottom - y_axis.fraction(v) * (bottom - top)

    desc = _describe(series, styles, kind, xlabel, ylabel, note, x_axis, y_axis)
    tid, did, cid = f"{id_prefix}-title", f"{id_prefix}-desc", f"{id_prefix}-clip"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {_n(width)} {_n(height)}" '
        f'width="{_n(width)}" height="{_n(height)}" role="img" aria-labelledby="{_e(tid)} {_e(did)}" '
        f'font-family="{FONT}">',
        f'<title id="{_e(tid)}">{_e(title)}</title>',
        f'<desc id="{_e(did)}">{_e(desc)}</desc>',
        f'<defs><clipPath id="{_e(cid)}"><rect x="{_n(left)}" y="{_n(top - 2)}" width="{_n(right - left)}" '
        f'height="{_n(bottom - top + 4)}"/></clipPath></defs>',
        f'<rect width="{_n(width)}" height="{_n(height)}" fill="#fff"/>',
    ]
    for i, line in enumerate(title_lines):
        out.append(f'<text x="{_n(width / 2)}" y="{_n(10 + TITLE_SIZE + i * (TITLE_SIZE + 5))}" '
                   f'text-anchor="middle" font-size="{TITLE_SIZE}" font-weight="600" fill="#111">{_e(line)}</text>')
    # legend
    for r, row in enumerate(legend_rows):
        total = (row[-1][2] + 34 + text_width(row[-1][0], LABEL_SIZE)) if row else 0
        x0 = (width - total) / 2
        y0 = legend_top + r * (LABEL_SIZE + 8) + LABEL_SIZE / 2 + 2
        for shown, position, offset in row:
            color = PALETTE[styles[position]]
            x = x0 + offset
            out.append('<g class="legend-item">')
            if kind == "line":
                out.append(f'<rect x="{_n(x)}" y="{_n(y0 - 6)}" width="28" height="12" fill="{color}" '
                           f'fill-opacity="0.18"/>')
                dash = f' stroke-dasharray="{_dash(position)}"' if _dash(position) else ""
                out.append(f'<line x1="{_n(x)}" y1="{_n(y0)}" x2="{_n(x + 28)}" y2="{_n(y0)}" stroke="{color}" '
                           f'stroke-width="2.2"{dash}/>')
            else:
                out.append(f'<line x1="{_n(x + 14)}" y1="{_n(y0 - 6)}" x2="{_n(x + 14)}" y2="{_n(y0 + 6)}" '
                           f'stroke="{color}" stroke-width="1.4"/>')
                out.append(_marker(_marker_kind(position), x + 14, y0, color))
            out.append(f'<text x="{_n(x + 34)}" y="{_n(y0 + 4)}" font-size="{LABEL_SIZE}" fill="#222">'
                       f'{_e(shown)}</text></g>')
    # grid, minor ticks and axes
    out.append(f'<g class="grid" stroke="{GRID_COLOR}" stroke-width="1">')
    for value, _ in x_axis.ticks:
        out.append(f'<line x1="{_n(px(value))}" y1="{_n(top)}" x2="{_n(px(value))}" y2="{_n(bottom)}"/>')
    for value, _ in y_axis.ticks:
        out.append(f'<line x1="{_n(left)}" y1="{_n(py(value))}" x2="{_n(right)}" y2="{_n(py(value))}"/>')
    out.append("</g>")
    out.append(f'<g class="axes" stroke="{AXIS_COLOR}" stroke-width="1">')
    out.append(f'<line x1="{_n(left)}" y1="{_n(bottom)}" x2="{_n(right)}" y2="{_n(bottom)}"/>')
    out.append(f'<line x1="{_n(left)}" y1="{_n(top)}" x2="{_n(left)}" y2="{_n(bottom)}"/>')
    for value, _ in x_axis.ticks:
        out.append(f'<line x1="{_n(px(value))}" y1="{_n(bottom)}" x2="{_n(px(value))}" y2="{_n(bottom + 5)}"/>')
    for value in x_axis.minor:
        out.append(f'<line x1="{_n(px(value))}" y1="{_n(bottom)}" x2="{_n(px(value))}" y2="{_n(bottom + 3)}"/>')
    for value, _ in y_axis.ticks:
        out.append(f'<line x1="{_n(left - 5)}" y1="{_n(py(value))}" x2="{_n(left)}" y2="{_n(py(value))}"/>')
    for value in y_axis.minor:
        out.append(f'<line x1="{_n(left - 3)}" y1="{_n(py(value))}" x2="{_n(left)}" y2="{_n(py(value))}"/>')
    out.append("</g>")
    out.append(f'<g class="ticks" font-size="{TICK_SIZE}" fill="#333">')
    for value, text in x_axis.ticks:
        if text:
            out.append(f'<text class="xtick" x="{_n(px(value))}" y="{_n(bottom + 7 + TICK_SIZE)}" '
                       f'text-anchor="middle">{_e(text)}</text>')
    for value, text in y_axis.ticks:
        if text:
            out.append(f'<text class="ytick" x="{_n(left - 8)}" y="{_n(py(value) + TICK_SIZE * 0.35)}" '
                       f'text-anchor="end">{_e(text)}</text>')
    out.append("</g>")
    if xlabel:
        out.append(f'<text x="{_n((left + right) / 2)}" y="{_n(height - 8)}" text-anchor="middle" '
                   f'font-size="{LABEL_SIZE}" fill="#222">{_e(_fit(xlabel, right - left, LABEL_SIZE))}</text>')
    if ylabel:
        cy = (top + bottom) / 2
        out.append(f'<text x="{_n(10 + LABEL_SIZE)}" y="{_n(cy)}" text-anchor="middle" font-size="{LABEL_SIZE}" '
                   f'fill="#222" transform="rotate(-90 {_n(10 + LABEL_SIZE)} {_n(cy)})">'
                   f'{_e(_fit(ylabel, bottom - top + 20, LABEL_SIZE))}</text>')
    # data
    out.append(f'<g class="data" clip-path="url(#{_e(cid)})">')
    count = len(series)
    for k, (s, style) in enumerate(zip(series, styles)):
        color = PALETTE[style]
        n = min(len(s.x), len(s.y))
        out.append(f'<g class="series" data-label="{_e(s.label)}">')
        if kind == "line":
            if s.low is not None and s.high is not None:
                band_ok = [i for i in range(n) if i < len(s.low) and i < len(s.high) and _ok(s.x[i], x_log)
                           and _ok(s.low[i], y_log) and _ok(s.high[i], y_log)]
                for run in _runs(band_ok):
                    if len(run) < 2:
                        continue
                    upper = [f"{_n(px(s.x[i]))},{_n(py(s.high[i]))}" for i in run]
                    lower = [f"{_n(px(s.x[i]))},{_n(py(s.low[i]))}" for i in reversed(run)]
                    out.append(f'<polygon points="{" ".join(upper + lower)}" fill="{color}" fill-opacity="0.18"/>')
            line_ok = [i for i in range(n) if _ok(s.x[i], x_log) and _ok(s.y[i], y_log)]
            dash = f' stroke-dasharray="{_dash(k)}"' if _dash(k) else ""
            for run in _runs(line_ok):
                if len(run) == 1:  # an isolated point between gaps: still visible
                    i = run[0]
                    out.append(_marker("circle", px(s.x[i]), py(s.y[i]), color, 2.6))
                    continue
                d = " ".join(("M" if j == 0 else "L") + f"{_n(px(s.x[i]))} {_n(py(s.y[i]))}"
                             for j, i in enumerate(run))
                out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2.2" '
                           f'stroke-linejoin="round"{dash}/>')
        else:
            dodge = (k - (count - 1) / 2) * 6
            for i in range(n):
                if not (_ok(s.x[i], x_log) and _ok(s.y[i], y_log)):
                    continue
                cx, cy = px(s.x[i]) + dodge, py(s.y[i])
                if s.low is not None and s.high is not None and i < len(s.low) and i < len(s.high) \
                        and _ok(s.low[i], y_log) and _ok(s.high[i], y_log):
                    y1, y2 = py(s.low[i]), py(s.high[i])
                    out.append(f'<path d="M{_n(cx)} {_n(y1)}V{_n(y2)}M{_n(cx - 4)} {_n(y1)}H{_n(cx + 4)}'
                               f'M{_n(cx - 4)} {_n(y2)}H{_n(cx + 4)}" stroke="{color}" stroke-width="1.4"/>')
                out.append(_marker(_marker_kind(k), cx, cy, color))
        out.append("</g>")
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def line_plot(series: Sequence[Series], *, title: str, xlabel: str = "", ylabel: str = "", xscale: str = "linear",
              yscale: str = "linear", note: str = "", id_prefix: str = "plot", width: float = 640,
              height: float = 380) -> str:
    """Curves with their 95 % bands (``low``/``high``), e.g. a metric over training steps."""
    return _plot("line", series, title=title, xlabel=xlabel, ylabel=ylabel, xscale=xscale, yscale=yscale,
                 note=note, id_prefix=id_prefix, width=width, height=height)


def points_plot(series: Sequence[Series], *, title: str, xlabel: str = "", ylabel: str = "",
                xscale: str = "linear", yscale: str = "linear", note: str = "", id_prefix: str = "plot",
                width: float = 640, height: float = 380) -> str:
    """Markers with 95 % error bars, e.g. a metric over a sweep of batch sizes."""
    return _plot("points", series, title=title, xlabel=xlabel, ylabel=ylabel, xscale=xscale, yscale=yscale,
                 note=note, id_prefix=id_prefix, width=width, height=height)


# ---------------------------------------------------------------------------- interval strip

VERDICT_COLORS = {"supported": "#1a7f37", "refuted": "#c62828", "mixed": "#b45309",
                  "inconclusive": "#5f6b76", "error": "#6a1b9a"}


def interval_strip(estimate: float, low: float, high: float, *, values: Sequence[float] = (),
                   threshold: float | None = None, band: tuple[float, float] | None = None,
                   holds_above: bool | None = None, verdict: str = "inconclusive", label: str = "",
                   width: float = 260, height: float = 44, level: str = "95%") -> str:
    """A one-line plot: per-seed values (grey dots), the interval (bar) and estimate (dot) against
    the rule's threshold (dashed line; the side where the rule holds is tinted green) or band."""
    color = VERDICT_COLORS.get(verdict, "#5f6b76")
    finite = [v for v in [estimate, low, high, *values] if v is not None and math.isfinite(v)]
    marks = [threshold] if threshold is not None else list(band or ())
    domain = finite + [m for m in marks if m is not None and math.isfinite(m)]
    lo, hi = (min(domain), max(domain)) if domain else (0.0, 1.0)
    if hi == lo:
        lo, hi = _expand(lo, hi, False)
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    left, right, mid = 6.0, width - 6.0, 16.0

    def px(v: float) -> float:
        v = min(max(v, lo), hi)
        return left + (v - lo) / (hi - lo) * (right - left)

    title = label or f"estimate with {level} interval"
    desc = (f"Estimate {format_number(estimate)}, {level} interval {format_number(low)} to {format_number(high)}"
            + (f", threshold {format_number(threshold)}" if threshold is not None else "")
            + (f", band {format_number(band[0])} to {format_number(band[1])}" if band else "")
            + (f", {len(values)} per-seed values" if values else "") + ".")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="strip" viewBox="0 0 {_n(width)} {_n(height)}" '
           f'width="{_n(width)}" height="{_n(height)}" role="img" font-family="{FONT}">',
           f"<title>{_e(title)}</title>", f"<desc>{_e(desc)}</desc>"]
    if threshold is not None and math.isfinite(threshold) and holds_above is not None:
        t = px(threshold)
        x0, x1 = (t, right) if holds_above else (left, t)
        out.append(f'<rect x="{_n(x0)}" y="2" width="{_n(max(x1 - x0, 0))}" height="{_n(mid * 2 - 4)}" '
                   f'fill="#1a7f37" fill-opacity="0.09"/>')
    if band is not None:
        x0, x1 = px(band[0]), px(band[1])
        out.append(f'<rect x="{_n(x0)}" y="2" width="{_n(max(x1 - x0, 0))}" height="{_n(mid * 2 - 4)}" '
                   f'fill="#1a7f37" fill-opacity="0.09"/>')
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v):
            jitter = ((i * 7919) % 11 - 5) * 0.9  # deterministic jitter so equal values stay visible
            out.append(f'<circle cx="{_n(px(v))}" cy="{_n(mid + jitter)}" r="2" fill="#888" fill-opacity="0.55"/>')
    lo_x = px(low) if math.isfinite(low) else left
    hi_x = px(high) if math.isfinite(high) else right
    out.append(f'<line x1="{_n(lo_x)}" y1="{_n(mid)}" x2="{_n(hi_x)}" y2="{_n(mid)}" stroke="{color}" '
               f'stroke-width="4" stroke-linecap="round"/>')
    if math.isfinite(estimate):
        out.append(f'<circle cx="{_n(px(estimate))}" cy="{_n(mid)}" r="5" fill="#fff" stroke="{color}" '
                   f'stroke-width="2.5"/>')
    for m in marks:
        if m is not None and math.isfinite(m):
            out.append(f'<line x1="{_n(px(m))}" y1="1" x2="{_n(px(m))}" y2="{_n(mid * 2 - 1)}" stroke="#222" '
                       f'stroke-width="1.3" stroke-dasharray="3 2"/>')
    # labels under the strip: threshold (or band edges) and interval ends, dropped where they would collide
    placed: list[tuple[float, float]] = []
    candidates = [(m, "#222", True) for m in marks if m is not None and math.isfinite(m)]
    candidates += [(v, color, False) for v in (low, high) if math.isfinite(v)]
    for value, fill, bold in candidates:
        text = format_number(value)
        w = text_width(text, 10)
        x = min(max(px(value), left + w / 2), right - w / 2)
        if any(abs(x - other) < (w + ow) / 2 + 4 for other, ow in placed):
            continue
        placed.append((x, w))
        weight = ' font-weight="600"' if bold else ""
        out.append(f'<text x="{_n(x)}" y="{_n(height - 3)}" text-anchor="middle" font-size="10" '
                   f'fill="{fill}"{weight}>{_e(text)}</text>')
    out.append("</svg>")
    return "".join(out)
