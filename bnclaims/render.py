"""The static site: results -> HTML pages (Jinja2), written atomically into ``out``.

``build_site`` renders every page in memory (``render_site``, a pure function of the
results and the thread files), then writes them into a fresh directory beside ``out`` and
swaps it in under an exclusive lock, so readers and concurrent builds only ever see a
whole site. Pages::

    index.html              every claim: verdict, reason, thread, tags; by verdict and by thread
    claims/<id>.html        one claim: quote, verdict and its statistics, plots, metrics, params, provenance
    threads/<stem>.html     a source thread, each quoted passage marked with its claim's verdict
    experiments/<module>.html an experiment module: each experiment (anchor = its name), then the source once
    about.html              how claims, rules and verdicts work; the claim file JSON Schema
    claim.schema.json, style.css

Links are relative, so the site works from ``file://`` and from any sub-path; nothing needs
JavaScript (the index has a small optional filter). Output is byte-for-byte deterministic.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import inspect
import json
import math
import os
import re
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote as urlquote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

import bnclaims
from bnclaims import experiments as registry
from bnclaims import coverage, mathtext, svg
from bnclaims.answers import REFERENCE, load_answers, parse_reference
from bnclaims.cache import dumps
from bnclaims.claims import Claim, schema_json, threads_dir_for
from bnclaims.errors import UserError
from bnclaims.results import ClaimResult
from bnclaims.verdict import ANSWER, operand_values

VERDICT_ORDER = ("supported", "refuted", "mixed", "inconclusive", "error")
VERDICT_SYMBOL = {"supported": "✓", "refuted": "✗", "mixed": "±", "inconclusive": "?", "error": "!"}
VERDICT_MEANING = {
    "supported": "the sentence holds as its author meant it: every headline condition held",
    "refuted": "the sentence does not hold: its headline conditions failed (any others could not tell)",
    "mixed": "part of the sentence holds and part does not; the page says which",
    "inconclusive": "the experiment cannot settle the sentence at this number of seeds",
    "error": "the experiment failed, so there is no verdict; the message says why",
}
CONDITION_MEANING = {
    "supported": "the whole interval satisfies the rule",
    "refuted": "the whole interval violates the rule",
    "inconclusive": "the interval straddles the threshold",
    "error": "the condition could not be judged",
}
MARKER = ".bnclaims-site"  # marks a directory as a site this module built (and may replace)


# --------------------------------------------------------------------------- formatting

def fmt(value, digits: int = 3) -> str:
    """A number for people: compact, Unicode minus, ∞ for unbounded intervals, — for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return svg._minus(str(value))
    return svg.format_number(float(value), digits)


def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    if p < 1e-4:
        return "< 0.0001"
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def fmt_value(value) -> str:
    """A parameter value as it would be written in the claim file."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def fmt_seeds(seeds: tuple[int, ...]) -> str:
    if not seeds:
        return "none"
    if list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(str(s) for s in seeds)


def one_line(text: str, limit: int = 220) -> str:
    """``text`` on one line, cut at a word boundary to at most ``limit`` characters."""
    text = " ".join((text or "").split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.-—") + "…"


_CODE = re.compile(r"`([^`\n]+)`")
_URL = re.compile(r"https?://[^\s<>\"'`]+[^\s<>\"'`.,;:!?)\]]")


def inline(text: str) -> Markup:
    """Escape ``text``; render `code`, $math$ and bare https:// links in it."""
    out = []
    for seg in mathtext.segments(text):
        piece = text[seg.start:seg.end]
        if seg.kind == "drop":
            continue
        if seg.kind != "text":
            out.append(str(seg.html))
            continue
        position = 0
        for match in re.finditer(f"{_CODE.pattern}|(?P<url>{_URL.pattern})", piece):
            out.append(str(escape(piece[position:match.start()])))
            if match.group("url"):
                url = match.group("url")
                out.append(f'<a href="{escape(url)}">{escape(url)}</a>')
            else:
                out.append(f"<code>{escape(match.group(1))}</code>")
            position = match.end()
        out.append(str(escape(piece[position:])))
    return Markup("".join(out))


def paragraphs(text: str) -> list[str]:
    """``text`` split at blank lines, or at single line breaks when it has no blank line (a YAML
    folded ``>`` block turns a blank line into one line break); whitespace collapsed in each."""
    text = (text or "").strip()
    separator = r"\n\s*\n" if re.search(r"\n\s*\n", text) else r"\n"
    return [" ".join(p.split()) for p in re.split(separator, text) if p.strip()]


def prose(text: str) -> Markup:
    """Paragraphs of ``inline`` text."""
    return Markup("\n".join(f"<p>{inline(p)}</p>" for p in paragraphs(text)))


def slug(name: str) -> str:
    """A file/anchor-safe name (experiment and metric names may hold anything)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "x"
    if cleaned != name:
        cleaned += "-" + hashlib.sha256(name.encode()).hexdigest()[:6]
    return cleaned


# --------------------------------------------------------------------------- threads

@dataclass
class Thread:
    name: str  # file name, with .txt
    text: str
    results: list[ClaimResult] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return self.name[:-4] if self.name.endswith(".txt") else self.name

    @property
    def href(self) -> str:
        return f"threads/{urlquote(self.stem)}.html"

    @property
    def label(self) -> str:
        match = re.match(r"^(\d+)_", self.stem)
        return f"Thread {match.group(1)}" if match else self.stem

    @property
    def title(self) -> str:
        """The thread's first line of at least three words, as plain text (math converted)."""
        for line in mathtext.prose_to_text(self.text).splitlines():
            words = line.split()
            if len(words) >= 3:
                return one_line(line, 90)
        return self.stem


# Forum scrape debris on a line of its own: vote counts, "1 Answer 1", "• 2".
_META_LINE = re.compile(r"^[\W\d_]*(\d+\s+Answers?\s+\d+)?[\W\d_]*$")


@dataclass(frozen=True)
class QuoteMark:
    claim_id: str
    start: int
    end: int
    verdict: str
    title: str
    href: str
    summary: str = ""  # the key number behind the verdict, shown in the margin note
    kind: str = "claim"  # "claim": a tested quote; "also": another sentence the claim's verdict answers (`also:`);
    # "untested": a testable sentence no claim tests yet


def untested_mark(entry, index: int) -> QuoteMark:
    """A sentence-map entry classed ``testable`` as a mark on the thread page (its note on hover/focus)."""
    s = entry.sentence
    return QuoteMark(f"u-{index}", s.start, s.end, "untested", f"Testable, not tested yet: {entry.note}", "",
                     kind="untested")


def also_anchor(claim_id: str, index: int) -> str:
    """The mark key (and, after ``q-``, the anchor) of a claim's ``index``-th also-quote (1-based); ids never
    contain ``--``, so it cannot clash with a claim's own."""
    return f"{claim_id}--also-{index}"


def claim_marks(result: ClaimResult) -> list[QuoteMark]:
    """A claim's quote and its also-quotes as marks on the thread page, each with the claim's verdict."""
    href = f"../claims/{result.id}.html"
    marks = [QuoteMark(result.id, result.claim.quote_span[0], result.claim.quote_span[1], result.status,
                       result.claim.title, href, _summary(result))]
    for i, also in enumerate(result.claim.also, 1):
        marks.append(QuoteMark(also_anchor(result.id, i), also.span[0], also.span[1], result.status,
                               result.claim.title, href, kind="also"))
    return marks


def thread_html(text: str, quotes: list[QuoteMark]) -> Markup:
    """The thread as paragraphs (one per line), math converted, every quote a ``<mark>``.

    Quotes may overlap: marks are split so the HTML nests (each fragment of a quote gets the
    same colour; its first fragment carries the ``q-<claim id>`` anchor) and a verdict badge,
    linking to the claim, follows the quote's last fragment. Quote ends falling inside a
    piece of math are widened to the whole piece, so math is never cut.
    """
    segs = mathtext.segments(text)
    seg_starts = [s.start for s in segs]

    def seg_at(offset: int) -> mathtext.Segment:
        lo, hi = 0, len(segs) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if seg_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return segs[lo]

    marks = []
    for q in quotes:
        start, end = q.start, q.end
        if not (0 <= start < end <= len(text)):
            continue
        first, last = seg_at(start), seg_at(end - 1)
        if first.kind != "text":
            start = first.start
        if last.kind != "text":
            end = last.end
        marks.append(QuoteMark(q.claim_id, start, end, q.verdict, q.title, q.href, q.summary, q.kind))
    order = {m.claim_id: i for i, m in enumerate(sorted(marks, key=lambda m: (m.start, -m.end, m.claim_id)))}

    bounds = {0, len(text)}
    for s in segs:
        bounds.update((s.start, s.end))
        if s.kind == "text":
            for match in re.finditer("\n", text[s.start:s.end]):
                bounds.update((s.start + match.start(), s.start + match.end()))
    for m in marks:
        bounds.update((m.start, m.end))
    cuts = sorted(bounds)

    paragraphs: list[list[tuple[int, int, mathtext.Segment]]] = [[]]
    for a, b in zip(cuts, cuts[1:]):
        seg = seg_at(a)
        if seg.kind == "text" and text[a:b] == "\n":
            paragraphs.append([])
        else:
            paragraphs[-1].append((a, b, seg))

    opened: set[str] = set()
    out: list[str] = []

    def marks_in(pieces) -> bool:
        return any(m.start < b and a < m.end for a, b, _ in pieces for m in marks)

    def open_tag(m: QuoteMark) -> str:
        anchor = "" if m.claim_id in opened else f' id="q-{m.claim_id}"'
        cont = " cont" if m.claim_id in opened else ""
        opened.add(m.claim_id)
        if m.kind == "untested":
            return f'<span class="untested{cont}"{anchor} tabindex="0" title="{escape(m.title)}">'
        if m.kind == "also":
            tip = escape(f"Says the same as the claim: {m.title} — {ANSWER[m.verdict]} ({m.verdict})")
            return f'<mark class="q v-{m.verdict} also{cont}"{anchor} title="{tip}">'
        tip = escape(f"{m.title} — {ANSWER[m.verdict]} ({m.verdict})")
        return f'<mark class="q v-{m.verdict}{cont}"{anchor} title="{tip}">'

    def close_tag(m: QuoteMark) -> str:
        return "</span>" if m.kind == "untested" else "</mark>"

    def badge(m: QuoteMark) -> str:
        if m.kind == "untested":  # a text label, so the difference does not rest on colour; the note is listed on top
            return f'<span class="badge untested-label" title="{escape(m.title)}">untested</span>'

        # the badge sits right after the passage; the note beside it goes to the margin on wide screens
        link = f'<a href="{escape(m.href)}">{escape(m.title)}</a>'
        if m.kind == "also":  # the claim's sentence said again: the same answer, and which claim gives it
            note = f"said again, tested by {link}"
        else:
            note = link + (f'<span class="side-summary">{escape(m.summary)}</span>' if m.summary else "")
        return (f'<a class="badge v-{m.verdict}" href="{escape(m.href)}" title="{escape(m.title)}">'
                f'<span aria-hidden="true">{VERDICT_SYMBOL[m.verdict]}</span> {ANSWER[m.verdict]} '
                f'<span class="vword">{m.verdict}</span></a>'
                f'<span class="side v-{m.verdict}"><span class="side-verdict">{VERDICT_SYMBOL[m.verdict]} '
                f'{ANSWER[m.verdict]}:</span> {note}</span>')

    for pieces in paragraphs:
        visible = [(a, b, s) for a, b, s in pieces if s.kind != "drop" and (s.kind != "text" or text[a:b].strip())]
        if not visible:
            continue
        only_display = all(s.kind == "display" for _, _, s in visible)
        body: list[str] = []
        stack: list[QuoteMark] = []
        for a, b, seg in pieces:
            active = sorted((m for m in marks if m.start <= a and b <= m.end), key=lambda m: order[m.claim_id])
            keep = 0
            while keep < len(stack) and keep < len(active) and stack[keep] is active[keep]:
                keep += 1
            while len(stack) > keep:
                closing = stack.pop()
                body.append(close_tag(closing))
                if closing.end <= a:
                    body.append(badge(closing))
            for m in active[keep:]:
                body.append(open_tag(m))
                stack.append(m)
            if seg.kind == "text":
                body.append(str(escape(text[a:b])))
            elif seg.kind != "drop":
                body.append(str(seg.html))
        end = pieces[-1][1] if pieces else 0
        while stack:
            closing = stack.pop()
            body.append(close_tag(closing))
            if closing.end <= end:
                body.append(badge(closing))
        plain = "".join(text[a:b] for a, b, s in visible if s.kind == "text")
        meta = not marks_in(pieces) and not only_display and _META_LINE.match(plain.strip() or "x")
        css = ' class="eq"' if only_display else ' class="meta"' if meta else ""
        out.append(f"<p{css}>{''.join(body).strip()}</p>")
    return Markup("\n".join(out))


# --------------------------------------------------------------------------- claim page parts

def _experiment(name: str) -> registry.Experiment | None:
    return registry.load_all().get(name)


def _display_source_path(exp: registry.Experiment) -> str:
    path = Path(exp.source_file)
    package = Path(bnclaims.__file__).resolve().parent
    try:
        return str(Path("bnclaims") / path.resolve().relative_to(package))
    except ValueError:
        return path.name


def _threshold_view(condition) -> dict:
    if condition.op == "between":
        return {"band": (condition.low, condition.high), "threshold": None, "holds_above": None}
    return {"band": None, "threshold": condition.threshold, "holds_above": condition.op in (">", ">=")}


def condition_rows(result: ClaimResult, beyond: bool = False) -> list[dict]:
    """One row per headline condition (or per ``beyond`` condition): its result, strip and meaning."""
    if result.verdict is None:
        return []
    judged = result.verdict.beyond if beyond else result.verdict.conditions
    declared = result.claim.beyond if beyond else result.claim.conditions
    rows = []
    per_seed = [run.metrics for run in result.runs]
    for index, (cond_result, item) in enumerate(zip(judged, declared)):
        condition = item.condition
        try:
            values = [float(v) for v in operand_values(condition, per_seed)]
        except (ValueError, KeyError, ZeroDivisionError):
            values = []
        view = _threshold_view(condition)
        strip = "" if cond_result.verdict == "error" else svg.interval_strip(
            cond_result.estimate, cond_result.ci_low, cond_result.ci_high, values=values,
            threshold=view["threshold"], band=view["band"], holds_above=view["holds_above"],
            verdict=cond_result.verdict, label=f"{cond_result.name}: {cond_result.text}",
            level="exact range" if condition.stat in ("min", "max") else f"{100 * cond_result.level:.4g}%",
        )
        exact = condition.stat in ("min", "max")
        rows.append({
            "index": index + 1, "anchor": f"{'b' if beyond else 'c'}-{index + 1}", "c": cond_result,
            "strip": Markup(strip), "exact": exact, "stat": condition.stat, "tests": cond_result.tests,
            "level": f"{100 * cond_result.level:.4g}%", "meaning": CONDITION_MEANING.get(cond_result.verdict, ""),
        })
    return rows


def _param_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))


def ladder_rows(result: ClaimResult) -> list[dict]:
    """The "At other scales" table: the base rung, then each rung of the ladder (run or not), with the
    verdict and every headline condition's estimate and interval."""
    if not result.claim.ladder:
        return []
    rows = []
    for name, note, changes, r in [("base", "the scale the verdict is given at", [], result)] + [
            (rung.name, rung.note, [(k, _param_text(v)) for k, v in rung.params.items()], rung_result)
            for rung, rung_result in result.ladder]:
        judged = r.verdict.conditions if r is not None and r.verdict is not None else ()
        rows.append({"name": name, "note": note, "changes": changes, "status": r.status if r else "not run",
                     "seeds": len(r.seeds) if r else 0, "error": r.error if r is not None else None,
                     "cells": list(judged)})
    return rows


def metric_rows(result: ClaimResult, exp: registry.Experiment | None) -> list[dict]:
    declared = list(exp.metrics) if exp else []
    names = [n for n in declared if n in result.metrics] + sorted(n for n in result.metrics if n not in declared)
    used = {m for c in result.claim.conditions + result.claim.beyond for m in c.condition.metric_names}
    rows = []
    for name in names:
        m = result.metrics[name]
        strip = svg.interval_strip(m.mean, m.ci_low, m.ci_high, values=list(m.values), verdict="inconclusive",
                                   label=f"{name}: mean with 95% interval and per-seed values")
        rows.append({"name": name, "anchor": f"m-{slug(name)}", "m": m, "used": name in used,
                     "description": inline(exp.metrics.get(name, "")) if exp else "", "strip": Markup(strip)})
    return rows


def plot_views(result: ClaimResult, exp: registry.Experiment | None) -> list[dict]:
    """SVG plots of the claim's declared plots, or one line plot per series if it declares none."""
    n_seeds = len(result.runs)
    descriptions = exp.series if exp else {}
    plots = list(result.claim.plots)
    auto = not plots and bool(result.series)
    if auto:
        plots = [_default_plot(name, result) for name in sorted(result.series)]
    views = []
    for index, plot in enumerate(plots):
        if not all(name in result.series for name in plot.y):
            continue
        if plot.x is not None and plot.x in result.series:
            xs = result.series[plot.x].mean
        else:
            length = max(len(result.series[name].mean) for name in plot.y)
            xs = tuple(float(i) for i in range(length))
        series = []
        for name, label in zip(plot.y, plot.labels or plot.y):
            s = result.series[name]
            length = min(len(xs), len(s.mean))
            series.append(svg.Series(label, tuple(xs[:length]), s.mean[:length], s.ci_low[:length], s.ci_high[:length]))
        note = f"Mean across {n_seeds} seeds."
        draw = svg.points_plot if plot.kind == "points" else svg.line_plot
        text = draw(series, title=plot.title, xlabel=plot.xlabel, ylabel=plot.ylabel, xscale=plot.xscale,
                    yscale=plot.yscale, note=note, id_prefix=f"plot{index + 1}")
        captions = [(label, inline(descriptions.get(name, ""))) for name, label in zip(plot.y, plot.labels or plot.y)]
        views.append({"title": plot.title, "svg": Markup(text), "kind": plot.kind, "captions": captions,
                      "x": plot.x, "auto": auto, "id": f"plot-{index + 1}"})
    return views


def _default_plot(name: str, result: ClaimResult):
    from bnclaims.claims import Plot

    values = [v for v in result.series[name].mean if v is not None and v > 0]
    spans_decades = len(values) == len(result.series[name].mean) and values and max(values) / min(values) >= 100
    return Plot(title=name, y=(name,), labels=(name,), xlabel="index", ylabel=name,
                yscale="log" if spans_decades else "linear")


def param_rows(claim: Claim, exp: registry.Experiment | None) -> list[dict]:
    try:
        params = claim.run_params()
    except KeyError:
        params = dict(claim.params)
    rows = []
    for name in sorted(params):
        spec = exp.params.get(name) if exp else None
        rows.append({"name": name, "value": fmt_value(params[name]), "set": name in claim.params,
                     "type": spec.type_name if spec else "", "default": fmt_value(spec.default) if spec else ""})
    return rows


def headline(result: ClaimResult) -> dict | None:
    if result.verdict is None or result.verdict.headline is None:
        return None
    c = result.verdict.headline
    return {"c": c, "name": c.name}


# --------------------------------------------------------------------------- answers

def _reference_html(ref, results: dict, root: str) -> str:
    """One ``[[...]]`` reference as HTML: a verdict badge, a number with its interval, or a mark."""
    result = results.get(ref.claim_id)
    href = f"{root}claims/{urlquote(ref.claim_id)}.html"
    if result is None or result.status == "error":
        state = "did not run" if result is None else "errored"
        return f'<span class="ref-broken" title="no result">[[{escape(ref.text)}]]: the claim {state}</span>'
    if ref.metric is not None:
        m = result.metrics.get(ref.metric)
        if m is None:
            return f'<span class="ref-broken">[[{escape(ref.text)}]]: no such metric in the results</span>'
        constant = m.n < 2 or m.ci_low == m.ci_high  # the same in every seed: an interval would say nothing
        text = fmt(m.mean) if constant else f"{fmt(m.mean)} [95% CI {fmt(m.ci_low)}, {fmt(m.ci_high)}]"
        return (f'<a class="ref-num" href="{href}#m-{escape(slug(ref.metric))}" '
                f'title="{escape(ref.metric)}: mean over {m.n} seeds, claim {escape(ref.claim_id)}">{escape(text)}</a>')
    if ref.condition is not None:
        judged = result.verdict.beyond if ref.beyond else result.verdict.conditions
        if not 1 <= ref.condition <= len(judged):
            return f'<span class="ref-broken">[[{escape(ref.text)}]]: no such condition</span>'
        c = judged[ref.condition - 1]
        anchor = f"{'b' if ref.beyond else 'c'}-{ref.condition}"
        return (f'<a class="badge cond v-{c.verdict}" href="{href}#{anchor}" title="{escape(c.name)}">'
                f'<span aria-hidden="true">{VERDICT_SYMBOL[c.verdict]}</span> {escape(c.name)}: {c.verdict}</a>')
    return (f'<a class="badge v-{result.status}" href="{href}" title="{escape(result.claim.title)}">'
            f'<span aria-hidden="true">{VERDICT_SYMBOL[result.status]}</span> {ANSWER[result.status]} '
            f'<span class="vword">{result.status}</span></a>')


def answer_html(text: str, results: dict, root: str = "../") -> Markup:
    """Paragraphs of an answer's text: escaped prose (as ``prose``) with its references resolved."""

    out = []
    for paragraph in paragraphs(text):
        pieces, position = [], 0
        for match in REFERENCE.finditer(paragraph):
            pieces.append(str(inline(paragraph[position:match.start()])))
            ref = parse_reference(match.group(1))
            pieces.append(_reference_html(ref, results, root) if ref else str(escape(match.group())))
            position = match.end()
        pieces.append(str(inline(paragraph[position:])))
        out.append(f"<p>{''.join(pieces)}</p>")
    return Markup("\n".join(out))


def _answer_view(answer, results: dict) -> dict:
    changed = [{"id": claim_id, "was": was, "now": results[claim_id].status}
               for claim_id, was in sorted(answer.written_against.items())
               if claim_id in results and results[claim_id].status != was]
    missing = sorted({ref.claim_id for ref in answer.references()
                      if ref.claim_id not in results or results[ref.claim_id].status == "error"})
    return {"summary": answer_html(answer.summary, results),
            "questions": [{"quote": inline(q.quote), "anchor": f"a-{i + 1}", "answer": answer_html(q.answer, results)}
                          for i, q in enumerate(answer.questions)],
            "changed": changed, "missing": missing}


# --------------------------------------------------------------------------- the site

def _environment() -> Environment:
    env = Environment(loader=PackageLoader("bnclaims", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(fmt=fmt, fmt_p=fmt_p, fmt_seeds=fmt_seeds, one_line=one_line,
                       prose=prose, inline=inline, urlquote=urlquote)
    env.globals.update(VERDICT_ORDER=VERDICT_ORDER, SYMBOL=VERDICT_SYMBOL, MEANING=VERDICT_MEANING, ANSWER=ANSWER,
                       version=bnclaims.__version__)
    return env


def _read_thread(path: Path, directory: Path) -> str | None:
    """A thread's text, or None unless it is a regular UTF-8 file inside ``directory`` (no symlink escapes)."""
    try:
        resolved = path.resolve(strict=True)
        if not resolved.is_relative_to(directory.resolve()) or not resolved.is_file():
            return None
        return resolved.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, RuntimeError):
        return None


def _threads(results: list[ClaimResult], claims_dir: Path) -> dict[str, Thread]:
    threads: dict[str, Thread] = {}
    directory = claims_dir / "threads"
    if directory.is_dir():
        for path in sorted(directory.glob("*.txt")):
            text = _read_thread(path, directory)
            if text is not None:
                threads[path.name] = Thread(path.name, text)
    for r in results:
        if r.claim.thread and r.claim.thread not in threads:
            path = threads_dir_for(r.claim.path) / r.claim.thread
            text = _read_thread(path, threads_dir_for(r.claim.path))
            if text is not None:
                threads[r.claim.thread] = Thread(r.claim.thread, text)
        if r.claim.thread in threads:
            threads[r.claim.thread].results.append(r)
    for t in threads.values():
        t.results.sort(key=lambda r: (r.claim.quote_span, r.id))
    return dict(sorted(threads.items()))


def _summary(result: ClaimResult) -> str:
    """The evidence in one short line: the headline condition's estimate and interval."""
    if result.status == "error":
        return one_line(result.error or "", 90)
    if result.verdict is not None and len(result.verdict.conditions) > 1:
        tally = Counter(c.verdict for c in result.verdict.conditions)
        parts = [f"{tally[v]} {v}" for v in ("supported", "refuted", "inconclusive") if tally[v]]
        return f"conditions: {', '.join(parts)}; {result.verdict.n_seeds} seeds"
    c = result.verdict.headline if result.verdict else None
    if c is None:
        return ""
    stat = c.reason.split(" = ")[0]
    if c.ci_low == c.ci_high or not (math.isfinite(c.ci_low) and math.isfinite(c.ci_high)):
        return f"{stat} = {fmt(c.estimate)}, {c.n} seeds"
    return f"{stat} = {fmt(c.estimate)} [{fmt(c.ci_low)}, {fmt(c.ci_high)}], {c.n} seeds"


def _quote_snippet(result: ClaimResult) -> Markup:
    return inline(one_line(result.claim.quote, 240))


def render_site(results: list[ClaimResult], claims_dir: Path) -> dict[str, bytes]:
    """Every file of the site, by relative path (a pure function of the results and thread files)."""
    env = _environment()
    results = sorted((r for r in results if "draft" not in r.claim.tags), key=lambda r: r.id)  # drafts are never published
    threads = _threads(results, claims_dir)
    thread_of = {r.id: threads.get(r.claim.thread) for r in results}
    files: dict[str, str | bytes] = {}
    counts = Counter(r.status for r in results)

    used_experiments: dict[str, list[ClaimResult]] = {}
    for r in results:
        used_experiments.setdefault(r.claim.experiment, []).append(r)
    # one page per module (its source once), an anchor per experiment on it
    page_of = {name: _module_page(name) for name in used_experiments}
    experiment_href = {name: f"experiments/{urlquote(page_of[name])}.html#{urlquote(slug(name))}"
                       for name in used_experiments}

    common = {"counts": counts, "n_claims": len(results)}
    by_verdict = {v: [r for r in results if r.status == v] for v in VERDICT_ORDER}
    maps = coverage.load_maps(claims_dir, [r.claim for r in results])[0]  # an invalid map shows no coverage
    answers = load_answers(claims_dir, [r.claim for r in results])[0]  # an invalid answer file is not published
    files["index.html"] = env.get_template("index.html").render(
        root="", page="index", results=results, by_verdict=by_verdict, threads=list(threads.values()),
        thread_of=thread_of, snippet=_quote_snippet, coverage=coverage.report(maps) if maps else None,
        maps=maps, answered={name for name in answers}, **common)

    claim_template = env.get_template("claim.html")
    for r in results:
        exp = _experiment(r.claim.experiment)
        exp = exp.resolved(r.claim.run_params()) if exp else None  # metric names may follow from params
        thread = thread_of[r.id]
        files[f"claims/{r.id}.html"] = claim_template.render(
            root="../", page="claim", r=r, claim=r.claim, thread=thread, exp=exp,
            experiment_href=experiment_href[r.claim.experiment],
            experiment_path=_display_source_path(exp) if exp else "",
            quote=inline(r.claim.quote), conditions=condition_rows(r), beyond=condition_rows(r, beyond=True),
            also=[{"quote": inline(a.quote), "line": a.line,
                   "href": f"../{thread.href}#q-{also_anchor(r.id, i)}" if thread else ""}
                  for i, a in enumerate(r.claim.also, 1)],
            headline=headline(r), level=f"{100 * r.verdict.level:.4g}%" if r.verdict else "95%",
            metrics=metric_rows(r, exp), plots=plot_views(r, exp), params=param_rows(r.claim, exp),
            computed_by=_computed_by(r), ladder=ladder_rows(r),
            **common)

    by_id = {r.id: r for r in results}
    answer_template = env.get_template("answer.html")
    for name, answer in sorted(answers.items()):
        t = threads.get(name)
        if t is None:
            continue
        files[f"answers/{t.stem}.html"] = answer_template.render(
            root="../", page="answer", thread=t, answer=_answer_view(answer, by_id), **common)

    thread_template = env.get_template("thread.html")
    for t in threads.values():
        marks = [m for r in t.results for m in claim_marks(r)]
        sentence_map = maps.get(t.name)
        untested = list(sentence_map.untested) if sentence_map else []
        marks += [untested_mark(entry, i + 1) for i, entry in enumerate(untested)]
        files[f"threads/{t.stem}.html"] = thread_template.render(
            root="../", page="thread", thread=t, body=thread_html(t.text, marks), sentence_map=sentence_map,
            answer_href=f"../answers/{urlquote(t.stem)}.html" if t.name in answers else None,
            untested=[{"anchor": f"q-u-{i + 1}", "line": e.sentence.line, "text": e.sentence.text, "note": e.note}
                      for i, e in enumerate(untested)],
            thread_counts=Counter(r.status for r in t.results),
            also_of={r.id: [{"anchor": f"q-{also_anchor(r.id, i)}", "line": a.line}
                            for i, a in enumerate(r.claim.also, 1)] for r in t.results},
            **common)

    experiment_template = env.get_template("experiment.html")
    by_page: dict[str, list[str]] = {}
    for name in sorted(used_experiments):
        by_page.setdefault(page_of[name], []).append(name)
    for page_name, names in sorted(by_page.items()):
        exps = [_experiment(name) for name in names]
        registered = [e for e in exps if e is not None]
        code, path = Markup(""), ""
        sections = []
        if registered:
            source_file = registered[0].source_file
            lines, ends = _read_source(Path(source_file))
            spans = [(e.first_line, ends.get(e.first_line, e.first_line)) for e in registered]
            code = _code_html(lines, spans)
            path = _display_source_path(registered[0])
        for name, exp in zip(names, exps):
            first = exp.first_line if exp else 0
            sections.append({
                "name": name, "anchor": slug(name), "exp": exp, "users": used_experiments[name],
                "first": first, "last": ends.get(first, first) if exp else 0,
                "params": [{"name": p.name, "type": p.type_name, "default": fmt_value(p.default)}
                           for p in exp.params.values()] if exp else []})
        files[f"experiments/{page_name}.html"] = experiment_template.render(
            root="../", page="experiment", module=registered[0].module if registered else page_name,
            sections=sections, code=code, path=path, **common)

    files["about.html"] = env.get_template("about.html").render(
        root="", page="about", schema=schema_json(), rules_doc=_doc("rules"), verdict_doc=_doc("verdict"),
        experiments=[{"name": name, "href": experiment_href[name], "claims": len(used_experiments[name]),
                      "summary": _first_line(_experiment(name))} for name in sorted(used_experiments)],
        **common)
    files["claim.schema.json"] = schema_json()
    # what each page was built from: `tests/test_site_current.py` compares it with the claims as they are now;
    # the hashes leave library versions out (the pages say which versions computed the results)
    rungs = [rung for r in results for _, rung in r.ladder if rung is not None]
    files["manifest.json"] = dumps({
        "bnclaims": bnclaims.__version__,
        "claims": {r.id: {"input_hash": r.site_hash, "verdict": r.status, "seconds": round(r.seconds, 3),
                          "cpu_seconds": round(sum(run.cpu_seconds for run in r.runs), 3)}
                   for r in sorted(results, key=lambda r: r.id)},
        **({"ladder": {r.id: {"input_hash": r.site_hash, "verdict": r.status, "seconds": round(r.seconds, 3),
                              "cpu_seconds": round(sum(run.cpu_seconds for run in r.runs), 3)}
                       for r in sorted(rungs, key=lambda r: r.id)}} if rungs else {}),
    }, indent=1, sort_keys=True) + "\n"
    # the seed runs the site was built from: a fresh clone's `bnclaims build` reuses them (runner.SeedStore)
    from bnclaims.runner import store_key

    for r in results + rungs:
        if not all(k in r.components for k in ("experiment", "params", "code")):
            continue  # not from a run (hand-made results): nothing a build could reuse
        files[f"results/{r.id}.json"] = dumps({
            "id": r.id, "experiment": r.claim.experiment, "params": r.components.get("params"),
            "code": r.components.get("code"),
            "runs": [{"key": store_key(r.components, run.seed), "seed": run.seed, "metrics": run.metrics,
                      "series": run.series, "seconds": run.seconds, "cpu_seconds": run.cpu_seconds,
                      "versions": run.versions, "blas": run.blas} for run in r.runs],
        }, sort_keys=True, separators=(",", ":")) + "\n"
    files["style.css"] = env.loader.get_source(env, "style.css")[0]
    files[MARKER] = "A site built by bnclaims; `bnclaims build` replaces this directory as a whole.\n"
    return {path: (data.encode("utf-8") if isinstance(data, str) else data) for path, data in sorted(files.items())}


def _read_source(path: Path) -> tuple[list[str], dict[int, int]]:
    """A module's lines (escaped) and, for every function, {first line incl. decorators: last line}."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return [], {}
    ends: dict[int, int] = {}
    try:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                ends[start] = node.end_lineno or node.lineno
    except SyntaxError:
        pass
    return [str(escape(line)) for line in text.splitlines()], ends


def _code_html(lines: list[str], spans: list[tuple[int, int]]) -> Markup:
    """Source lines with numbers and ``L<n>`` anchors; the lines of each (first, last) span highlighted."""
    out = []
    for number, line in enumerate(lines, 1):
        css = "line hl" if any(first <= number <= last for first, last in spans) else "line"
        out.append(f'<span class="{css}" id="L{number}"><a class="ln" href="#L{number}" aria-hidden="true">'
                   f'{number}</a>{line}\n</span>')
    return Markup("".join(out))


def _module_page(name: str) -> str:
    """The experiments page an experiment is shown on: its module's (by name when it is not registered)."""
    exp = _experiment(name)
    return slug(exp.module) if exp is not None else slug(name)


def _doc(module: str) -> str:
    import importlib

    return inspect.cleandoc(importlib.import_module(f"bnclaims.{module}").__doc__ or "").replace("``", "")


def _computed_by(result: ClaimResult) -> list[str]:
    """The library versions and BLAS kernels that computed a claim's seeds, one line per distinct set."""
    seen: dict[str, int] = {}
    for run in result.runs:
        versions = run.versions or (result.components.get("versions", {}) if isinstance(result.components, dict) else {})
        line = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        line += f"; BLAS {run.blas}" if run.blas else ""
        seen[line] = seen.get(line, 0) + 1
    if len(seen) == 1:
        return list(seen)
    return [f"{line} ({n} seeds)" for line, n in sorted(seen.items())]


def _first_line(exp: registry.Experiment | None) -> str:
    return one_line(exp.doc.split("\n\n")[0], 160) if exp and exp.doc else ""


# --------------------------------------------------------------------------- writing

from contextlib import contextmanager  # noqa: E402 - used by the writing section only


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    # the marker last: a directory holding it is a whole site (what recovering an interrupted swap relies on)
    for relative in sorted(files, key=lambda name: name == MARKER):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(files[relative])


def _replaceable(out: Path) -> bool:
    """Only a site this module built (or an empty directory) is ever replaced."""
    if not out.exists() and not out.is_symlink():
        return True
    if out.is_symlink() or not out.is_dir():
        return False
    return (out / MARKER).is_file() or not any(out.iterdir())


# The swap. A build writes the new site beside --out and swaps it in with two renames; a journal file
# written first names everything the build will create, with a token unique to the build:
#     .<out>.swap-<token>   the journal: {"bnclaims-site-swap": 1, "out": ..., "old": ..., "new": ...}
#     .<out>.new-<token>    the new site, its marker file written last (present = complete)
#     .<out>.old-<token>    the previous site, between the two renames
# If the build is killed, the next build (or any command that names the same --out) reads the journal
# and completes or rolls back the swap, then deletes exactly the two names it lists. Nothing is ever
# deleted by pattern, so a user's `.site.old-2023/` stays where it is.

_TOKEN = re.compile(r"[0-9a-f]{16}")


def _sibling(out: Path, kind: str, token: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{token}"


def _journal(out: Path, token: str) -> dict:
    return {"bnclaims-site-swap": 1, "out": out.name, "old": _sibling(out, "old", token).name,
            "new": _sibling(out, "new", token).name}


def _journals(out: Path) -> list[tuple[Path, str]]:
    """This --out's swap journals left by interrupted builds (only files holding exactly a journal)."""
    prefix = f".{out.name}.swap-"
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        token = name[len(prefix):]
        if not name.startswith(prefix) or not _TOKEN.fullmatch(token):
            continue
        path = out.parent / name
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
                continue
            if json.loads(path.read_bytes()) == _journal(out, token):
                found.append((path, token))
        except (OSError, ValueError):
            continue
    return found


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        return  # the journal names directories this build made; anything else is not ours
    shutil.rmtree(path, ignore_errors=True)


def _recover(out: Path) -> None:
    """Complete or roll back every interrupted swap into ``out`` (call under the lock)."""
    for journal, token in _journals(out):
        old, new = _sibling(out, "old", token), _sibling(out, "new", token)
        if not _exists(out):
            if new.is_dir() and not new.is_symlink() and (new / MARKER).is_file():
                os.rename(new, out)  # killed between the renames: finish the swap
            elif old.is_dir() and not old.is_symlink():
                os.rename(old, out)  # the new site was not whole: put the old one back
        _remove_tree(new)
        _remove_tree(old)
        journal.unlink(missing_ok=True)


@contextmanager
def _locked(out: Path):
    """Builds into the same directory take turns: an exclusive flock on --out's parent directory itself,
    so no lock file is created (and none is left behind)."""
    try:
        fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = None  # a parent that cannot be opened for reading: builds there are not serialized
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def check_out(out: Path) -> None:
    """Finish any interrupted swap into ``out``, then refuse an ``out`` that a build may not replace.
    Called before any seed runs, so a wrong --out costs nothing."""
    out = Path(os.path.abspath(out))
    if _exists(out.parent) and not out.parent.is_dir():
        raise UserError(f"--out {out}: {out.parent} is not a directory")
    if out.parent.is_dir():
        with _locked(out):
            _recover(out)
    if not _replaceable(out):
        raise UserError(f"{out} exists and is not a site built by bnclaims; refusing to replace it "
                        f"(remove it or choose another --out)")


def write_site(files: dict[str, bytes], out: Path) -> None:
    """Write ``files`` as the directory ``out``, atomically: a new directory, swapped in under a lock.
    After any interruption ``out`` is the old site or the new one, once the next build has recovered."""
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    journal, fresh, old = _sibling(out, "swap", token), _sibling(out, "new", token), _sibling(out, "old", token)
    with _locked(out):
        _recover(out)
        if not _replaceable(out):
            raise UserError(f"{out} exists and is not a site built by bnclaims; refusing to replace it "
                            f"(remove it or choose another --out)")
        fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(_journal(out, token)).encode())
                f.flush()
                os.fsync(f.fileno())
            fresh.mkdir()
            _write_tree(fresh, files)
            if _exists(out):
                os.rename(out, old)
            os.rename(fresh, out)
        except BaseException:
            if not _exists(out) and old.is_dir():
                os.rename(old, out)  # put the previous site back
            _remove_tree(fresh)
            journal.unlink(missing_ok=True)
            raise
        _remove_tree(old)
        journal.unlink(missing_ok=True)


def build_site(results: list[ClaimResult], out: Path, claims_dir: Path) -> int:
    """Render the site for ``results`` into ``out``; return the number of HTML pages written."""
    files = render_site(results, Path(claims_dir))
    write_site(files, Path(out))
    return sum(1 for path in files if path.endswith(".html"))
