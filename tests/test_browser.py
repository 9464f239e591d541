"""The site in a real browser: headless Chromium opens pages from file://.

Checks that each page renders (screenshot not blank), shows the expected text (``--dump-dom``)
and logs nothing to the console (no script errors, no missing files). Needs the Debian
package ``chromium``; skipped without it, except under CI (``CI`` set), where it fails.
Set ``BNCLAIMS_SCREENSHOTS=DIR`` to keep the screenshots for a look.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import toy_experiments  # noqa: E402,F401  (registers toy-normal)

from bnclaims.claims import load_claims  # noqa: E402
from bnclaims.render import build_site  # noqa: E402
from bnclaims.results import SeedRun, build_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
THREAD = "002_55d87fa20057dfdd"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]

CLAIM = f"""\
id: gamma-beta-redundant
title: "γ and β are redundant after a linear layer"
claim: The scale $\\gamma$ and shift $\\beta$ add nothing that `W` cannot do.
source:
  thread: {THREAD}
  quote: "aren't these parameters redundant because the inputs can be scaled and shifted in any way"
tags: [affine]
experiment: toy-normal
params: {{n_points: 40}}
seeds: 10
rule:
  conditions:
    - name: x is positive
      holds: mean(x) > 0
      tests: "these parameters"
    - name: y is positive
      holds: mean(y) > 0
      tests: "these parameters"
expected: mixed
explanation: x is, y is not.
scope: A toy scope.
plots:
  - title: Curve over training
    x: steps
    y: [curve]
    xlabel: step
    ylabel: value
"""


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium not found (install it with: apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_chromium(chromium: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120)


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, decompressed scanlines) of a PNG, decoded by hand (no imaging library)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat, width, height = 8, [], 0, 0
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat.append(body)
        position += 12 + length
    return width, height, zlib.decompress(b"".join(idat))


def looks_blank(path: Path) -> bool:
    """A blank page is a few byte values; a rendered page has text, colour and anti-aliasing."""
    _, _, raw = png_pixels(path)
    most = max(raw.count(bytes([b])) for b in set(raw[:: max(1, len(raw) // 20000)]))
    return len(set(raw)) < 40 or most > 0.995 * len(raw)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    claims_dir = root / "claims"
    (claims_dir / "threads").mkdir(parents=True)
    shutil.copy(REPO / "claims" / "threads" / f"{THREAD}.txt", claims_dir / "threads")
    (claims_dir / "gamma-beta-redundant.yaml").write_text(CLAIM, encoding="utf-8")
    claims, problems = load_claims([claims_dir])
    assert problems == []
    runs = [SeedRun(seed, {"x": 1.0 + 0.1 * (seed % 3), "y": -1.0 + 0.1 * (seed % 4)},
                    {"curve": [0.5 * i + 0.05 * seed for i in range(40)], "steps": [float(i) for i in range(40)]},
                    0.01, True) for seed in range(10)]
    result = build_result(claims[0], list(range(10)), runs, {}, "ab" * 32, {}, [])
    assert result.status == "mixed"
    build_site([result], root / "site", claims_dir)
    return root / "site"


PAGES = {
    "index": ("index.html", ["Claims about batch normalization, tested", "γ and β are redundant", "mixed",
                             "Thread 002"]),
    "claim": ("claims/gamma-beta-redundant.html", ["Why this verdict", "95% confidence interval", "<svg",
                                                   "x is positive", "supported", "refuted", "Provenance"]),
    "thread": (f"threads/{THREAD}.html", ['id="q-gamma-beta-redundant"', "± Partly right", "γ", "𝒩",
                                          'class="math display"']),
}


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_renders_in_chromium(site, name, tmp_path):
    chromium = find_chromium()
    relative, expected = PAGES[name]
    url = (site / relative).resolve().as_uri()

    shot = tmp_path / f"{name}.png"
    result = run_chromium(chromium, f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.is_file(), f"no screenshot: {result.stderr[-2000:]}"
    width, height, _ = png_pixels(shot)
    assert (width, height) == (1280, 2000)
    assert not looks_blank(shot), f"{name} screenshot is blank"
    assert console_messages(result.stderr) == []
    if os.environ.get("BNCLAIMS_SCREENSHOTS"):
        keep = Path(os.environ["BNCLAIMS_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)

    result = run_chromium(chromium, "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for text in expected:
        assert text in dom, f"{name}: {text!r} not in the rendered page"
    assert console_messages(result.stderr) == [], f"{name}: console output {console_messages(result.stderr)}"
    if name == "thread":
        visible = re.sub(r"<[^>]+>", "", dom[dom.index('<article class="thread-text"'):dom.index("</article>")])
        assert "$" not in visible


def test_the_checks_can_fail(tmp_path):
    """A blank page is detected as blank, and a script error is seen on the console."""
    chromium = find_chromium()
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shot = tmp_path / "blank.png"
    run_chromium(chromium, f"--screenshot={shot}", "--window-size=1280,2000", blank.as_uri())
    assert looks_blank(shot)
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    result = run_chromium(chromium, "--dump-dom", broken.as_uri())
    assert any("Uncaught" in line for line in console_messages(result.stderr))


def test_a_long_condition_cited_in_prose_wraps_instead_of_widening_the_page(tmp_path):
    """An answer cites conditions by their full names, some 20 words long: the badge wraps with the text
    (`.badge.cond`), where a plain nowrap badge would push the page wider than the window."""
    chromium = find_chromium()
    css = (REPO / "bnclaims" / "templates" / "style.css").read_text(encoding="utf-8")
    name = "at least half of a step's first-layer weight update differs from batch to batch " * 3
    measure = ("<script>document.body.insertAdjacentHTML('beforeend', '<p id=\"w\">' + "
               "document.documentElement.scrollWidth + ' ' + window.innerWidth + '</p>')</script>")
    widths = {}
    for cls in ("badge cond v-supported", "badge v-supported"):
        page = tmp_path / f"{cls.split()[1]}.html"
        page.write_text(f"<!DOCTYPE html><html><head><style>{css}</style></head><body><main><div class='prose'>"
                        f"<p>Most of it is <a class='{cls}' href='#c-1'>✓ {name}: supported</a>.</p></div>"
                        f"</main>{measure}</body></html>", encoding="utf-8")
        dom = run_chromium(chromium, "--window-size=800,600", "--dump-dom", page.as_uri()).stdout
        widths[cls] = tuple(int(v) for v in re.search(r'<p id="w">(\d+) (\d+)</p>', dom).groups())
    scroll, window = widths["badge cond v-supported"]
    assert scroll <= window
    scroll, window = widths["badge v-supported"]
    assert scroll > window                     # the check can fail: a nowrap badge does overflow
