"""SVG plots: golden files, well-formed XML, accessibility, readable ticks, escaping.

Golden files live in tests/golden/; regenerate them with BNCLAIMS_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bnclaims import svg

GOLDEN = Path(__file__).parent / "golden"
NS = {"s": "http://www.w3.org/2000/svg"}
XSS = '<script>alert(1)</script> "><img src=x onerror=alert(1)>'


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("BNCLAIMS_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"missing golden file {path}; run with BNCLAIMS_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file (BNCLAIMS_UPDATE_GOLDEN=1)"


def band_series() -> list[svg.Series]:
    steps = tuple(float(10 * i) for i in range(60))
    fast = [2.0 * math.exp(-i / 8) + 0.1 for i in range(60)]
    slow = [1.6 * math.exp(-i / 30) + 0.2 for i in range(60)]
    return [
        svg.Series("with BN", steps, tuple(fast), tuple(v - 0.05 for v in fast), tuple(v + 0.05 for v in fast)),
        svg.Series("without BN", steps, tuple(slow), tuple(v - 0.12 for v in slow), tuple(v + 0.12 for v in slow)),
    ]


def sweep_series() -> list[svg.Series]:
    sizes = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
    bn = [0.5 + 0.3 / math.sqrt(b) for b in sizes]
    gn = [0.56 for _ in sizes]
    return [
        svg.Series("BatchNorm", sizes, tuple(bn), tuple(v - 0.02 for v in bn), tuple(v + 0.03 for v in bn)),
        svg.Series("GroupNorm", sizes, tuple(gn), tuple(v - 0.02 for v in gn), tuple(v + 0.02 for v in gn)),
    ]


def gap_series() -> list[svg.Series]:
    y = [None if 8 <= i <= 11 or i == 14 else 1.0 + 0.1 * i for i in range(24)]
    y[16] = None
    low = [None if v is None else v - 0.2 for v in y]
    high = [None if v is None else v + 0.2 for v in y]
    return [svg.Series("gappy", tuple(float(i) for i in range(24)), tuple(y), tuple(low), tuple(high))]


def line_svg() -> str:
    return svg.line_plot(band_series(), title="Training loss with and without batch norm", xlabel="training step",
                         ylabel="loss (nats)", note="Mean across 30 seeds.", id_prefix="p1")


def points_svg() -> str:
    return svg.points_plot(sweep_series(), title="Test accuracy over batch size", xlabel="batch size (examples)",
                           ylabel="accuracy", xscale="log", id_prefix="p2")


def gaps_svg() -> str:
    return svg.line_plot(gap_series(), title="A series with missing values", xlabel="step", ylabel="value",
                         id_prefix="p3")


# ---------------------------------------------------------------------------- golden files

def test_line_plot_with_band_matches_golden():
    check_golden("line_band.svg", line_svg())


def test_log_x_points_with_error_bars_matches_golden():
    check_golden("points_logx.svg", points_svg())


def test_gaps_match_golden():
    check_golden("line_gaps.svg", gaps_svg())


# ---------------------------------------------------------------------------- structure

@pytest.mark.parametrize("make", [line_svg, points_svg, gaps_svg])
def test_plots_are_well_formed_and_accessible(make):
    root = ET.fromstring(make())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("role") == "img"
    title, desc = root.find("s:title", NS), root.find("s:desc", NS)
    assert title is not None and title.text
    assert desc is not None and "95% confidence" in desc.text
    labelled = root.get("aria-labelledby").split()
    assert labelled == [title.get("id"), desc.get("id")]


def test_line_plot_draws_one_band_and_one_path_per_series():
    root = ET.fromstring(line_svg())
    groups = root.findall(".//s:g[@class='series']", NS)
    assert [g.get("data-label") for g in groups] == ["with BN", "without BN"]
    for group in groups:
        assert len(group.findall("s:polygon", NS)) == 1
        assert len(group.findall("s:path", NS)) == 1


def test_none_values_are_gaps():
    root = ET.fromstring(gaps_svg())
    group = root.find(".//s:g[@class='series']", NS)
    # valid runs: 0-7, 12-13, 15, 17-23 -> three paths and an isolated point drawn as a dot
    assert len(group.findall("s:path", NS)) == 3
    assert len(group.findall("s:circle", NS)) == 1
    assert len(group.findall("s:polygon", NS)) == 3
    for path in group.findall("s:path", NS):
        assert path.get("d").count("M") == 1
    assert "gaps" in root.find("s:desc", NS).text


def test_points_plot_has_error_bars_and_log_ticks():
    root = ET.fromstring(points_svg())
    groups = root.findall(".//s:g[@class='series']", NS)
    for group in groups:
        bars = [p for p in group.findall("s:path", NS) if "V" in p.get("d")]
        assert len(bars) == 10
    xticks = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == "xtick"]
    assert xticks == ["10", "100", "1000"]  # decades inside the data's range 2..1024
    assert "log scale" in root.find("s:desc", NS).text


def _tick_boxes(root, cls: str):
    boxes = []
    for t in root.iter("{http://www.w3.org/2000/svg}text"):
        if t.get("class") == cls:
            x, y = float(t.get("x")), float(t.get("y"))
            width = svg.text_width(t.text, svg.TICK_SIZE)
            anchor = t.get("text-anchor")
            left = x - width / 2 if anchor == "middle" else x - width if anchor == "end" else x
            boxes.append((left, left + width, y - svg.TICK_SIZE, y))
    return boxes


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


@pytest.mark.parametrize("make", [line_svg, points_svg, gaps_svg])
def test_tick_labels_do_not_overlap(make):
    root = ET.fromstring(make())
    for cls in ("xtick", "ytick"):
        boxes = _tick_boxes(root, cls)
        assert len(boxes) >= 2, f"too few {cls} labels"
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not _overlap(a, b), f"{cls} labels overlap: {a} {b}"


@pytest.mark.parametrize("lo,hi", [(0, 1), (0.001, 0.0042), (-3.3, 7.9), (0, 123456), (1e-9, 5e-9), (99, 101)])
def test_linear_ticks_fit_and_cover(lo, hi):
    axis = svg.linear_axis(lo, hi, 300, True)
    values = [v for v, _ in axis.ticks]
    assert axis.lo <= lo and axis.hi >= hi
    assert 2 <= len(values) <= 10
    labels = [label for _, label in axis.ticks]
    assert len(set(labels)) == len(labels), labels  # precision is enough to tell ticks apart
    positions = [axis.fraction(v) * 300 for v in values]
    assert svg._fits(labels, positions, True, svg.TICK_SIZE)


def test_log_axis_within_a_decade_labels_2_and_5():
    axis = svg.log_axis(0.3, 3, 400, True)
    assert [label for _, label in axis.ticks] == ["0.5", "1", "2"]
    assert axis.minor


def test_log_axis_spanning_many_decades_thins_labels():
    axis = svg.log_axis(1e-12, 1e6, 200, True)
    labelled = [label for _, label in axis.ticks if label]
    assert 2 <= len(labelled) < len(axis.ticks)
    assert all(label.startswith("10") for label in labelled)


def test_nice_step_is_1_2_5():
    for span in (0.37, 3.7, 17, 230, 9999):
        step = svg.nice_step(span, 5)
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 6) in (1, 2, 5)


def test_format_number_is_compact():
    assert svg.format_number(0) == "0"
    assert svg.format_number(0.012345) == "0.0123"
    assert svg.format_number(-2.5) == "−2.5"
    assert svg.format_number(123456) == "123456"
    assert svg.format_number(1.5e-7) == "1.5×10⁻⁷"
    assert svg.format_number(1e-7) == "10⁻⁷"
    assert svg.format_number(math.inf) == "∞"
    assert svg.format_number(None) == "—"


def test_colours_are_stable_per_label_and_distinct_within_a_plot():
    assert svg.assign_styles(["BatchNorm"]) == svg.assign_styles(["BatchNorm"])
    first = svg.assign_styles(["BatchNorm", "LayerNorm"])[0]
    assert first == svg.color_index("BatchNorm")
    labels = [f"condition {i}" for i in range(len(svg.PALETTE))]
    assert len(set(svg.assign_styles(labels))) == len(svg.PALETTE)


def test_text_is_escaped():
    series = [svg.Series(XSS, (1.0, 2.0), (1.0, 2.0), (0.5, 1.5), (1.5, 2.5))]
    for draw in (svg.line_plot, svg.points_plot):
        text = draw(series, title=XSS, xlabel=XSS, ylabel=XSS, note=XSS, id_prefix='x"><script>')
        assert "<script>" not in text and "<img" not in text
        root = ET.fromstring(text)  # still well-formed
        assert root.find("s:title", NS).text == XSS


def test_a_bold_title_that_would_overflow_the_plot_wraps():
    # rendered in Chromium (DejaVu Sans, weight 600, 14 px) this title is 666 px wide: more than the 616 px
    # a 640-px plot leaves, although text_width's regular-weight estimate (615 px) says it fits
    title = "How far each hidden unit's input distribution moves in 10 steps, with BN (moments)"
    assert svg.text_width(title, svg.TITLE_SIZE) < 640 - 24 < 666
    root = ET.fromstring(svg.line_plot([svg.Series("a", (1.0, 2.0), (1.0, 2.0))], title=title, width=640))
    lines = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("font-weight") == "600"]
    assert len(lines) == 2 and " ".join(lines) == title


def test_interval_strip_is_well_formed_and_escaped():
    text = svg.interval_strip(0.5, 0.2, 0.8, values=[0.1, 0.6, 0.9], threshold=0.0, holds_above=True,
                              verdict="supported", label=XSS)
    root = ET.fromstring(text)
    assert root.find("s:title", NS).text == XSS
    assert "<script>" not in text
    # an unbounded interval (one seed) still draws
    ET.fromstring(svg.interval_strip(1.0, -math.inf, math.inf, band=(0.0, 2.0)))


def test_empty_and_degenerate_inputs_render():
    ET.fromstring(svg.line_plot([svg.Series("none", (None,), (None,))], title="empty"))
    ET.fromstring(svg.line_plot([svg.Series("flat", (0.0, 1.0), (3.0, 3.0))], title="flat"))
    ET.fromstring(svg.points_plot([svg.Series("neg", (-1.0, 10.0), (1.0, 2.0))], title="log with a negative x",
                                  xscale="log"))


def test_output_is_deterministic():
    assert line_svg() == line_svg()
    assert points_svg() == points_svg()


def test_long_series_are_thinned_but_keep_their_gaps():
    n = 5000
    y = tuple(None if 2000 <= i < 2010 else float(i) for i in range(n))
    text = svg.line_plot([svg.Series("long", tuple(float(i) for i in range(n)), y)], title="long")
    root = ET.fromstring(text)
    paths = root.findall(".//s:g[@class='series']/s:path", NS)
    assert len(paths) == 2  # the gap survives thinning
    assert sum(p.get("d").count("L") + 1 for p in paths) <= svg.MAX_POINTS
