"""The static site: golden claim page, links, well-formed HTML, escaping, math, determinism, atomicity.

Golden files live in tests/golden/; regenerate them with BNCLAIMS_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bnclaims.experiments import experiment


# Experiments defined here (kept at the top so the golden page's line numbers stay put).
@experiment("render-test-sweep", metrics={"gain": "accuracy gained by the `label` setting"},
            series={"batch_size": "batch sizes swept", "accuracy": "test accuracy", "loss": "training loss"})
def render_test_sweep(rng: np.random.Generator, *, label: str = "plain", steps: int = 5) -> dict:
    sizes = np.array([2.0, 8.0, 32.0, 128.0, 512.0])
    return {"gain": float(rng.normal(0.1, 0.05)), "batch_size": sizes, "accuracy": 0.9 - 0.1 / np.sqrt(sizes),
            "loss": np.exp(-np.arange(steps) / 2.0)}


sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import toy_experiments  # noqa: E402,F401  (registers toy-normal and toy-fault)

from bnclaims import render  # noqa: E402
from bnclaims.claims import load_claims  # noqa: E402
from bnclaims.errors import UserError  # noqa: E402
from bnclaims.results import SeedRun, build_result  # noqa: E402
from bnclaims.verdict import ANSWER  # noqa: E402
from bnclaims.runner import RunOptions, run_claims  # noqa: E402

import bnclaims  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
XSS = f"{SCRIPT} {IMG}"
THREAD_002 = "002_55d87fa20057dfdd.txt"
THREAD_000 = "000_9d0fa3abc03cef76.txt"

XSS_THREAD = f"""Title line of a hostile thread {SCRIPT}

Some words before {IMG} and then the tested sentence: batch norm is magic & wonderful.
More text after {SCRIPT}.
"""

CLAIMS = {
    "gamma-redundant": f"""
        id: gamma-redundant
        title: "γ and β are redundant after a linear layer"
        claim: >
          The scale $\\gamma$ and shift $\\beta$ add nothing, because `W` can absorb them.
        source:
          thread: {THREAD_002[:-4]}
          quote: "aren't these parameters redundant because the inputs can be scaled"
        tags: [affine, toy]
        experiment: toy-normal
        params: {{mu: 1.0, n_points: 30}}
        seeds: 8
        rule:
          conditions:
            - name: x is positive
              holds: mean(x) > 0
              tests: "these parameters"
        expected: supported
        explanation: It is so; see https://arxiv.org/abs/1502.03167.
        scope: A toy scope.
        references:
          - title: Ioffe & Szegedy 2015
            arxiv: "1502.03167"
        plots:
          - title: Curve over steps
            x: steps
            y: [curve]
            xlabel: step
            ylabel: value
    """,
    "overlap-a": f"""
        id: overlap-a
        title: Gamma and beta are one pair per layer
        claim: One pair per layer.
        source:
          thread: {THREAD_002[:-4]}
          quote: "$\\\\gamma$ and $\\\\beta$ are scalar values and there is a pair of each for every batch-normed layer"
        tags: [toy]
        experiment: toy-normal
        params: {{mu: -1.0}}
        seeds: 6
        rule:
          conditions:
            - name: x is positive
              holds: mean(x) > 0
              tests: "are scalar"
        expected: refuted
        explanation: Nope.
        scope: A toy scope.
    """,
    "overlap-b": f"""
        id: overlap-b
        title: They are learnt with backprop
        claim: Learnt along with the weights.
        source:
          thread: {THREAD_002[:-4]}
          quote: "there is a pair of each for every batch-normed layer. They are learnt along with the weights"
        tags: [toy]
        experiment: toy-normal
        params: {{mu: 0.0, sd: 0.1}}
        seeds: 6
        rule:
          conditions:
            - name: positive
              holds: mean(x) > 0.2
              tests: "there is"
            - name: negative
              holds: mean(x) < -0.2
              tests: "there is"
        explanation: Neither.
        scope: A toy scope.
    """,
    "across-lines": f"""
        id: across-lines
        title: A quote that spans a line break
        claim: Consistency.
        source:
          thread: {THREAD_000[:-4]}
          quote: "reducing internal covariate shift. My question is how can we get a consistent distribution"
        tags: [toy]
        experiment: toy-normal
        seeds: 4
        rule:
          conditions:
            - name: x is near one
              holds: mean(x) between -10 and 10
              tests: "reducing internal"
        explanation: Wide band.
        scope: A toy scope.
    """,
    "failing": f"""
        id: failing
        title: A failing experiment
        claim: It fails.
        source:
          thread: {THREAD_000[:-4]}
          quote: "This distribution fluctuates a lot."
        tags: [toy]
        experiment: toy-fault
        params: {{fault: raise}}
        seeds: 2
        rule:
          conditions:
            - name: ok
              holds: mean(x) > 0
              tests: "This distribution"
        explanation: Fails.
        scope: A toy scope.
    """,
}

XSS_CLAIM = f"""
    id: hostile
    title: '{XSS}'
    claim: '{XSS}'
    source:
      thread: hostile_thread
      quote: "batch norm is magic & wonderful."
    tags: [toy]
    experiment: render-test-sweep
    params: {{label: '{XSS}'}}
    seeds: 4
    rule:
      conditions:
        - name: '{XSS}'
          holds: mean(gain) > 0
          tests: "magic & wonderful"
      beyond:
        - name: '{XSS}'
          holds: mean(gain) < 100
    explanation: '{XSS}'
    scope: '{XSS}'
    references:
      - title: '{XSS}'
        url: https://example.org/a?b=1&c=2
        note: '{XSS}'
    plots:
      - title: '{XSS}'
        x: batch_size
        y: [accuracy]
        labels: ['{XSS}']
        xlabel: '{XSS}'
        ylabel: '{XSS}'
        xscale: log
        kind: points
"""

GOLDEN_CLAIM = """
    id: golden-claim
    title: Batch norm gains accuracy across batch sizes
    claim: >
      With batch norm the test accuracy is higher, by more than 0.05, whatever the batch size.
    source:
      thread: 002_55d87fa20057dfdd
      quote: "The mean and variance $\\\\mu, \\\\sigma^2$ are estimated by measuring their values for the current mini-batch."
    tags: [golden, accuracy]
    experiment: render-test-sweep
    params: {steps: 6}
    seeds: 5
    rule:
      conditions:
        - name: gain is positive
          holds: mean(gain) > 0.05
          tests: "The mean"
        - name: gain is modest
          holds: mean(gain) < 0.5
          tests: "estimated by measuring"
      beyond:
        - name: gain is large
          holds: mean(gain) > 0.12
    expected: supported
    scope: >
      The author asserts that in training mode the statistics come from the current mini-batch.
    explanation: >
      The gain is positive in every seed (see `gain`).

      A second paragraph.
    references:
      - title: Ioffe & Szegedy 2015, Batch Normalization
        arxiv: "1502.03167"
        note: Section 3.
    plots:
      - title: Accuracy over batch size
        x: batch_size
        y: [accuracy]
        labels: [BatchNorm]
        xlabel: batch size
        ylabel: test accuracy
        xscale: log
        kind: points
      - title: Training loss
        y: [loss]
        xlabel: step
        ylabel: loss
"""


def write_claims_dir(root: Path, claims: dict[str, str]) -> Path:
    claims_dir = root / "claims"
    (claims_dir / "threads").mkdir(parents=True)
    for name in (THREAD_002, THREAD_000):
        shutil.copy(REPO / "claims" / "threads" / name, claims_dir / "threads" / name)
    (claims_dir / "threads" / "hostile_thread.txt").write_text(XSS_THREAD, encoding="utf-8")
    for claim_id, text in claims.items():
        (claims_dir / f"{claim_id}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return claims_dir


def synthetic_result(claim, gains: list[float]):
    """A ClaimResult built from fixed per-seed numbers (no worker, no timing noise)."""
    sizes = [2.0, 8.0, 32.0, 128.0, 512.0]
    runs = []
    for seed, gain in enumerate(gains):
        accuracy = [0.9 - 0.1 / s ** 0.5 + 0.01 * ((seed * 7 + i) % 5 - 2) for i, s in enumerate(sizes)]
        loss = [2.0 * 0.6 ** i + 0.02 * seed if i != 3 else None for i in range(6)]
        runs.append(SeedRun(seed, {"gain": gain}, {"batch_size": sizes, "accuracy": accuracy, "loss": loss},
                            0.25, True))
    components = {"versions": {"bnclaims": "X", "numpy": "X", "python": "X", "scipy": "X"}}
    return build_result(claim, list(range(len(gains))), runs, {}, "0" * 64, components, ["all seeds cached"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    claims_dir = write_claims_dir(root, {**CLAIMS, "hostile": XSS_CLAIM})
    claims, problems = load_claims([claims_dir])
    assert problems == []
    toy = [c for c in claims if c.experiment.startswith("toy-")]
    results = run_claims(toy, RunOptions(cache_dir=root / "cache", jobs=1, modules=("toy_experiments",)),
                         progress=False)
    hostile = next(c for c in claims if c.id == "hostile")
    results.append(synthetic_result(hostile, [0.1, 0.2, 0.15, 0.12]))
    return results, claims_dir, root


@pytest.fixture(scope="module")
def site(inputs):
    results, claims_dir, root = inputs
    out = root / "site"
    pages = render.build_site(results, out, claims_dir=claims_dir)
    return out, pages


# ---------------------------------------------------------------------------- HTML checking

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class PageChecker(HTMLParser):
    """Collects ids, links and tags of one page, and every nesting error."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.ids: Counter = Counter()
        self.links: list[str] = []
        self.local_refs: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.in_script = False

    def _attrs(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids[attrs["id"]] += 1
        for name in ("href", "src"):
            if attrs.get(name) is not None:
                self.links.append(attrs[name])
        for ref in (attrs.get("aria-labelledby") or "").split():
            self.local_refs.append(ref)
        match = re.match(r"url\(#([^)]+)\)", attrs.get("clip-path") or "")
        if match:
            self.local_refs.append(match.group(1))

    def handle_starttag(self, tag, attrs):
        self._attrs(tag, attrs)
        if tag == "script":
            self.in_script = True
        if tag not in VOID:
            self.stack.append((tag, self.getpos()[0]))

    def handle_startendtag(self, tag, attrs):
        self._attrs(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"line {self.getpos()[0]}: </{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        if not self.in_script:
            self.text.append(data)

    def close(self):
        super().close()
        if self.stack:
            self.errors.append(f"unclosed tags at end: {self.stack}")


def check_page(path: Path) -> PageChecker:
    checker = PageChecker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    return checker


def page_text(checker: PageChecker) -> str:
    return " ".join(" ".join(checker.text).split())


def html_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.html"))


def tree_digest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- the site

def test_build_writes_every_page(site, inputs):
    out, pages = site
    results, _, _ = inputs
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    expected = {"index.html", "about.html", "style.css", "claim.schema.json",
                "threads/002_55d87fa20057dfdd.html", "threads/000_9d0fa3abc03cef76.html",
                "threads/hostile_thread.html", "experiments/toy_experiments.html", "experiments/test_render.html"}
    expected |= {f"claims/{r.id}.html" for r in results}
    assert expected <= files
    assert pages == len(html_files(out))
    assert (out / "claim.schema.json").read_text() == bnclaims.claims.schema_json()


def test_every_page_is_well_formed_html(site):
    out, _ = site
    for path in html_files(out):
        checker = check_page(path)
        assert checker.errors == [], f"{path.relative_to(out)}: {checker.errors[:3]}"
        duplicated = [i for i, n in checker.ids.items() if n > 1]
        assert duplicated == [], f"{path.relative_to(out)}: duplicate ids {duplicated}"


def test_every_internal_link_and_anchor_resolves(site):
    out, _ = site
    pages = {path.resolve(): check_page(path) for path in html_files(out)}
    checked = 0
    for path, page in pages.items():
        for ref in page.local_refs:
            assert page.ids[ref], f"{path.name}: reference to missing id {ref!r}"
        for link in page.links:
            if re.match(r"^(https?:|mailto:)", link):
                continue
            assert not link.startswith("/"), f"{path.name}: absolute link {link!r} breaks under file:// and sub-paths"
            target, _, fragment = link.partition("#")
            target_path = (path.parent / target).resolve() if target else path
            assert target_path.is_file(), f"{path.relative_to(out.resolve())}: broken link {link!r}"
            assert out.resolve() in target_path.parents, f"{path.name}: link {link!r} leaves the site"
            if fragment:
                assert target_path in pages, f"{path.name}: anchor into a non-page {link!r}"
                assert pages[target_path].ids[fragment], f"{path.name}: missing anchor {link!r}"
            checked += 1
    assert checked > 50


def test_claim_links_to_its_place_in_the_thread_and_back(site):
    out, _ = site
    claim_page = (out / "claims" / "gamma-redundant.html").read_text()
    assert 'href="../threads/002_55d87fa20057dfdd.html#q-gamma-redundant"' in claim_page
    thread = check_page(out / "threads" / "002_55d87fa20057dfdd.html")
    assert thread.ids["q-gamma-redundant"] == 1
    assert "../claims/gamma-redundant.html" in thread.links
    assert 'href="../experiments/toy_experiments.html#toy-normal"' in claim_page


def test_one_page_per_experiment_module_with_an_anchor_per_experiment(site):
    out, _ = site
    page = (out / "experiments" / "toy_experiments.html").read_text()
    assert 'id="toy-normal"' in page and 'id="toy-fault"' in page
    assert page.count('<section id="source"') == 1  # the module's source once, not once per experiment
    assert page.count('class="line hl"') >= 2  # both functions highlighted


def test_xss_is_escaped_everywhere(site):
    out, _ = site
    seen_escaped = Counter()
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        assert SCRIPT not in text, f"{path.relative_to(out)} contains a raw script tag"
        assert "<img" not in text, f"{path.relative_to(out)} contains a raw img tag"
        if path.suffix != ".html":
            continue
        page = check_page(path)
        for tag, attrs in page.tags:
            assert not any(name.startswith("on") for name in attrs), f"{path.name}: event handler on <{tag}>"
            assert tag != "img"
            for name in ("href", "src"):
                assert not (attrs.get(name) or "").lower().startswith("javascript:")
        scripts = [t for t, _ in page.tags if t == "script"]
        assert len(scripts) == (1 if path.name == "index.html" else 0)
        seen_escaped[path.name] += text.count("&lt;script&gt;alert(1)&lt;/script&gt;")
    # the hostile text is shown (escaped) where it was used: title, claim, condition, plot, params, thread
    assert seen_escaped["hostile.html"] >= 8
    assert seen_escaped["hostile_thread.html"] >= 2
    assert seen_escaped["index.html"] >= 1
    hostile = (out / "claims" / "hostile.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in hostile


def test_thread_math_renders_without_dollars(site):
    out, _ = site
    page = check_page(out / "threads" / "002_55d87fa20057dfdd.html")
    article = (out / "threads" / "002_55d87fa20057dfdd.html").read_text()
    body = article[article.index('<article class="thread-text"'):article.index("</article>")]
    text = re.sub(r"<[^>]+>", "", body)
    assert "$" not in text
    assert "begingroup" not in text and "endgroup" not in text
    assert "\\gamma" not in text and "\\mathcal" not in text and "\\hat" not in text
    assert "γ" in text and "β" in text and "μ" in text and "σ" in text
    assert "𝒩" in text  # \mathcal{N}
    assert "x\u0302" in text  # \hat{x}: x with a combining circumflex
    assert "′" in text  # primes
    assert '<span class="math display">' in body and "<sub><i>i</i></sub>" in body and "<sup>2</sup>" in body
    assert page.errors == []


def test_thread_marks_every_quote_with_its_verdict(site, inputs):
    results, _, _ = inputs
    out, _ = site
    html = (out / "threads" / "002_55d87fa20057dfdd.html").read_text()
    by_id = {r.id: r for r in results}
    for claim_id in ("gamma-redundant", "overlap-a", "overlap-b"):
        verdict = by_id[claim_id].status
        assert re.search(rf'<mark class="q v-{verdict}" id="q-{claim_id}"', html), claim_id
        # the badge reads as an answer ("Right"), with the verdict word beside it
        assert re.search(rf'<a class="badge v-{verdict}" href="../claims/{claim_id}.html"[^>]*>'
                         rf'<span aria-hidden="true">.</span> {ANSWER[verdict]} <span class="vword">{verdict}</span></a>',
                         html), claim_id
    # overlap-a and overlap-b overlap: overlap-b's mark is nested inside overlap-a's, then continues after it
    assert re.search(r'id="q-overlap-a"[^>]*>.*?<mark class="q v-\w+" id="q-overlap-b"', html, re.S)
    assert re.search(r'<mark class="q v-\w+ cont"[^>]*>\. They are learnt', html)
    # a quote across a line break is split per paragraph, its anchor only on the first piece
    thread_000 = (out / "threads" / "000_9d0fa3abc03cef76.html").read_text()
    assert thread_000.count('id="q-across-lines"') == 1
    assert re.search(r'<mark class="q v-\w+ cont"[^>]*>My question is how can we get a consistent distribution',
                     thread_000)


def test_index_lists_every_claim_with_verdict_reason_thread_and_tags(site, inputs):
    results, _, _ = inputs
    out, _ = site
    page = check_page(out / "index.html")
    text = page_text(page)
    for r in results:
        assert f"claims/{r.id}.html" in page.links
        assert r.status in text
    assert "affine" in text  # a tag
    counts = Counter(r.status for r in results)
    for verdict, n in counts.items():
        assert f"{n} {ANSWER[verdict]} {verdict}" in text
    assert "Thread 002" in text


def test_claim_page_shows_statistics_and_provenance(site, inputs):
    results, _, _ = inputs
    out, _ = site
    r = next(r for r in results if r.id == "gamma-redundant")
    page = check_page(out / "claims" / "gamma-redundant.html")
    text = page_text(page)
    for needle in ("95% CI", "p-value", "effect size", "mean(x) > 0", r.site_hash, "Seeds", "0–7",
                   "numpy", "Expected verdict", "a normal draw with mean", "arXiv:1502.03167", "Computed with", "BLAS"):
        assert needle in text, needle
    assert "https://arxiv.org/abs/1502.03167" in page.links
    assert any(tag == "svg" and attrs.get("class") == "plot" for tag, attrs in page.tags)


def test_error_claim_shows_the_message(site, inputs):
    out, _ = site
    results, _, _ = inputs
    failing = next(r for r in results if r.id == "failing")
    assert failing.status == "error"
    html = (out / "claims" / "failing.html").read_text()
    assert 'role="alert"' in html and "boom from the experiment" in html
    assert "! No verdict error" in page_text(check_page(out / "index.html"))


def test_builds_are_deterministic(inputs, tmp_path):
    results, claims_dir, _ = inputs
    render.build_site(results, tmp_path / "one", claims_dir)
    render.build_site(list(reversed(results)), tmp_path / "two", claims_dir)
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")


# ---------------------------------------------------------------------------- golden page

def test_claim_page_matches_golden(tmp_path):
    claims_dir = write_claims_dir(tmp_path, {"golden-claim": GOLDEN_CLAIM})
    claims, problems = load_claims([claims_dir])
    assert problems == []
    result = synthetic_result(claims[0], [0.11, 0.14, 0.09, 0.13, 0.12])
    files = render.render_site([result], claims_dir)
    page = files["claims/golden-claim.html"].decode("utf-8").replace(bnclaims.__version__, "VERSION")
    path = GOLDEN / "claim_page.html"
    if os.environ.get("BNCLAIMS_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    assert path.is_file(), "missing golden file; run with BNCLAIMS_UPDATE_GOLDEN=1"
    assert page == path.read_text(encoding="utf-8"), "claim page differs from tests/golden/claim_page.html " \
                                                     "(BNCLAIMS_UPDATE_GOLDEN=1 to accept)"


# ---------------------------------------------------------------------------- thread rendering units

def test_overlapping_and_identical_quotes_nest_properly():
    text = "alpha beta gamma delta epsilon\nzeta eta theta"
    marks = [
        render.QuoteMark("a", 0, 16, "supported", "A", "a.html"),  # alpha beta gamma
        render.QuoteMark("b", 6, 22, "refuted", "B", "b.html"),  # beta gamma delta
        render.QuoteMark("c", 6, 22, "mixed", "C", "c.html"),  # the same span as b
        render.QuoteMark("d", 23, 39, "error", "D", "d.html"),  # epsilon \n zeta eta (across a line)
    ]
    html = str(render.thread_html(text, marks))
    checker = PageChecker()
    checker.feed(f"<div>{html}</div>")
    checker.close()
    assert checker.errors == []
    for claim_id in "abcd":
        assert checker.ids[f"q-{claim_id}"] == 1
        assert html.count(f'href="{claim_id}.html"') == 2  # badge and margin note, once each
    assert html.count("<p>") == 2


def test_quote_ending_inside_math_is_widened_to_the_whole_formula():
    text = "where $W' = W\\gamma$ and more"
    span = (0, text.index("W\\gamma") + 2)  # ends inside the $...$
    html = str(render.thread_html(text, [render.QuoteMark("m", *span, "supported", "M", "m.html")]))
    assert "$" not in re.sub(r"<[^>]+>", "", html)
    assert re.search(r'<mark[^>]*>where <span class="math">.*?</span></mark>', html)


# ---------------------------------------------------------------------------- atomicity

def test_failed_render_leaves_the_previous_site(inputs, tmp_path, monkeypatch):
    results, claims_dir, _ = inputs
    out = tmp_path / "site"
    render.build_site(results, out, claims_dir)
    before = tree_digest(out)

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(render, "thread_html", boom)
    with pytest.raises(RuntimeError, match="injected"):
        render.build_site(results[:2], out, claims_dir)
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".site.lock") == ["site"]


def test_failed_write_leaves_the_previous_site(inputs, tmp_path, monkeypatch):
    results, claims_dir, _ = inputs
    out = tmp_path / "site"
    render.build_site(results, out, claims_dir)
    before = tree_digest(out)
    real_write = render._write_tree

    def half_then_fail(root, files):
        real_write(root, dict(list(files.items())[: len(files) // 2]))
        raise OSError("disk full (injected)")

    monkeypatch.setattr(render, "_write_tree", half_then_fail)
    with pytest.raises(OSError, match="injected"):
        render.build_site(results[:1], out, claims_dir)
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".site.lock") == ["site"]


CONCURRENT = """
import pickle, sys
sys.path.insert(0, {fixtures!r})
import toy_experiments
from pathlib import Path
from bnclaims.render import build_site
results = pickle.loads(Path({pickled!r}).read_bytes())
for _ in range(6):
    assert build_site(results, Path({out!r}), Path({claims!r})) > 0
print("ok")
"""


def test_concurrent_builds_both_succeed_and_leave_a_whole_site(inputs, tmp_path):
    results, claims_dir, _ = inputs
    toy = [r for r in results if r.claim.experiment.startswith("toy-")]
    pickled = tmp_path / "results.pickle"
    pickled.write_bytes(pickle.dumps(toy))
    out = tmp_path / "site"
    script = CONCURRENT.format(fixtures=str(Path(__file__).parent / "fixtures"), pickled=str(pickled),
                               out=str(out), claims=str(claims_dir))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr
        assert stdout.strip() == "ok"
    assert (out / "index.html").is_file()
    for r in toy:
        assert (out / "claims" / f"{r.id}.html").is_file()
    for path in html_files(out):
        assert check_page(path).errors == []
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".site.") and p.name != ".site.lock"]
    assert leftovers == []


def test_refuses_to_replace_a_directory_it_did_not_build(inputs, tmp_path):
    results, claims_dir, _ = inputs
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a site built by bnclaims"):
        render.build_site(results[:1], precious, claims_dir)
    assert (precious / "notes.txt").read_text() == "keep me"
    # an existing empty directory is fine, and so is rebuilding a site
    (tmp_path / "empty").mkdir()
    render.build_site(results[:1], tmp_path / "empty", claims_dir)
    render.build_site(results[:1], tmp_path / "empty", claims_dir)
    assert (tmp_path / "empty" / "index.html").is_file()


def test_site_dir_gets_normal_permissions(inputs, tmp_path):
    results, claims_dir, _ = inputs
    render.build_site(results[:1], tmp_path / "site", claims_dir)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "site").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


def test_compute_time_is_in_the_manifest_not_on_the_page(inputs, tmp_path):
    """A warm and a cold build differ in run times; the pages must not (the manifest keeps them)."""
    results, claims_dir, _ = inputs
    r = dataclasses.replace(results[0], cached=True, seconds=12.5)
    files = render.render_site([r], claims_dir)
    assert files[f"claims/{r.id}.html"] == render.render_site([results[0]], claims_dir)[f"claims/{r.id}.html"]
    assert json.loads(files["manifest.json"])["claims"][r.id]["seconds"] == 12.5