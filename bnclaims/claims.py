"""Claim files: schema, loading, and line-accurate errors.

A claim file is one YAML mapping (see ``bnclaims schema`` / README "Claim files").
``load_claims`` reads every file it is given, reports *every* problem of *every* file
(one ``Problem`` each, with file, line and column), and returns the valid claims.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnclaims import experiments as registry
from bnclaims.errors import Problem
from bnclaims import textmatch
from bnclaims.rules import NamedCondition, RuleSyntaxError, parse_condition, same_condition
from bnclaims.verdict import VERDICTS
from bnclaims.yamlpos import MAX_BYTES, Located, YamlProblem, load

ID_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
RUNG_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
TAG_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
THREAD_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ARXIV_PATTERN = re.compile(r"^(\d{4}\.\d{4,5}|[a-z-]+(\.[A-Z]{2})?/\d{7})(v\d+)?$")
DOI_PATTERN = re.compile(r"^10\.\d{4,9}/\S+$")
MAX_SEEDS = 10_000
DEFAULT_TIMEOUT = 600.0
MAX_RULE_LENGTH = 500  # a rule is one short line; longer text is refused before it is parsed


# --------------------------------------------------------------------------- schema
# One description of the format serves the loader and the published JSON Schema.

def _str(description: str, **extra) -> dict:
    return {"type": "string", "description": description, **extra}


REFERENCE_SCHEMA = {
    "type": "object",
    "description": "A paper or page that bears on the claim; give at least one of arxiv, doi, url.",
    "required": ["title"],
    "additionalProperties": False,
    "properties": {
        "title": _str("Title of the work (authors and year welcome)", minLength=1),
        "arxiv": _str("arXiv identifier, e.g. 1502.03167", pattern=ARXIV_PATTERN.pattern),
        "doi": _str("DOI, e.g. 10.5555/3045118.3045167", pattern=DOI_PATTERN.pattern),
        "url": _str("https:// address", pattern=r"^https?://\S+$"),
        "note": _str("What in the work bears on the claim"),
    },
}

PLOT_SCHEMA = {
    "type": "object",
    "description": "A plot of series returned by the experiment (mean across seeds with a 95% band).",
    "required": ["title", "y"],
    "additionalProperties": False,
    "properties": {
        "title": _str("Plot title", minLength=1),
        "x": _str("Series used as x axis (default: the index, e.g. the training step)"),
        "y": {"type": "array", "items": {"type": "string"}, "minItems": 1,
              "description": "Series drawn, one line (or set of points) each"},
        "labels": {"type": "array", "items": {"type": "string"},
                   "description": "Legend labels for the y series (default: their names)"},
        "xlabel": _str("x axis label with unit"),
        "ylabel": _str("y axis label with unit"),
        "xscale": {"enum": ["linear", "log"], "description": "x axis scale (default linear)"},
        "yscale": {"enum": ["linear", "log"], "description": "y axis scale (default linear)"},
        "kind": {"enum": ["line", "points"],
                 "description": "line: curve with band (over steps); points: markers with error bars (sweeps)"},
    },
}

CONDITION_SCHEMA = {
    "type": "object",
    "required": ["name", "holds"],
    "additionalProperties": False,
    "properties": {
        "name": _str("The setting this condition tests", minLength=1),
        "tests": _str("The words of the quote this condition tests (a fragment of source.quote, "
                      "matched like the quote)", minLength=1),
        "holds": _str("STAT(metric | a - b | a / b) OP number, or ... between a and b; "
                      "STAT: mean, median, geomean, min, max; OP: <, <=, >, >=",
                      maxLength=MAX_RULE_LENGTH),
    },
}

ALSO_SCHEMA = {
    "type": "array",
    "description": "Other sentences of the same thread that assert the same thing, in the same scope, as the "
                   "quote: the verdict answers them too. Each is matched like source.quote, and the thread's "
                   "sentence map must name the claim on its sentence",
    "items": {
        "type": "object",
        "description": "One more quote of the claim's thread",
        "required": ["quote"],
        "additionalProperties": False,
        "properties": {
            "thread": _str("The claim's thread, source.thread (may be left out)", pattern=THREAD_PATTERN.pattern),
            "quote": _str("The exact words, as found in the thread (whitespace may differ)", minLength=1),
        },
    },
}

CLAIM_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://bnclaims.invalid/claim.schema.json",
    "title": "bnclaims claim file",
    "description": "One claim about batch normalization, quoted from a thread and tested by an experiment.",
    "type": "object",
    "required": ["id", "title", "claim", "scope", "source", "tags", "experiment", "seeds", "rule", "explanation"],
    "additionalProperties": False,
    "properties": {
        "id": _str("Claim id: lowercase words joined by '-', equal to the file name without .yaml",
                   pattern=ID_PATTERN.pattern, maxLength=80),
        "title": _str("Short title shown in lists", minLength=1, maxLength=200),
        "claim": _str("The claim restated in plain words as a testable statement", minLength=1),
        "scope": _str("One or two sentences: what the author asserts and in what setting (training or "
                      "inference mode, which network, 'usually' or 'always'), read from the thread; for a "
                      "question, the assertion it implies. Shown above the verdict", minLength=1),
        "source": {
            "type": "object",
            "description": "Where the claim was said",
            "required": ["thread", "quote"],
            "additionalProperties": False,
            "properties": {
                "thread": _str("A thread file under claims/threads/ (name, .txt optional)",
                               pattern=THREAD_PATTERN.pattern),
                "quote": _str("The exact words, as found in the thread (whitespace may differ)", minLength=1),
            },
        },
        "also": ALSO_SCHEMA,
        "tags": {"type": "array", "items": _str("tag", pattern=TAG_PATTERN.pattern), "uniqueItems": True,
                 "description": "Tags; each also becomes a pytest marker"},
        "experiment": _str("Name of a registered experiment (bnclaims list --experiments)"),
        "params": {"type": "object", "description": "Experiment parameters; checked against its signature"},
        "seeds": {"type": "integer", "minimum": 1, "maximum": MAX_SEEDS,
                  "description": "Number of seeds the experiment runs with"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400,
                    "description": f"Seconds one seed may take (default {DEFAULT_TIMEOUT:g})"},
        "rule": {
            "type": "object",
            "description": "The verdict rule: headline conditions decide the verdict; beyond conditions are shown beside it",
            "required": ["conditions"],
            "additionalProperties": False,
            "properties": {
                "conditions": {
                    "type": "array", "minItems": 1,
                    "description": "Headline conditions: only what the quoted sentence asserts, in its scope. "
                                   "They share a 95% family-wise level (Bonferroni)",
                    "items": CONDITION_SCHEMA | {"required": ["name", "tests", "holds"]},
                },
                "beyond": {
                    "type": "array",
                    "description": "Everything outside the sentence (other modes, scales, counterfactuals, "
                                   "neighbouring sentences, diagnostic sweeps); each judged at 95%, never "
                                   "changing the verdict",
                    "items": CONDITION_SCHEMA,
                },
            },
        },
        "expected": {"enum": [v for v in VERDICTS if v != "error"],
                     "description": "The verdict this claim is known to get (an error always fails)"},
        "explanation": _str("Why the verdict, in plain words, shown on the site", minLength=1),
        "references": {"type": "array", "items": REFERENCE_SCHEMA},
        "plots": {"type": "array", "items": PLOT_SCHEMA},
        "ladder": {
            "type": "array",
            "description": "Other scales: rungs, each the base params with some overridden, judged with the same "
                           "conditions. The verdict stays the base rung's; `bnclaims run --ladder` runs them",
            "items": {
                "type": "object",
                "required": ["name", "params"],
                "additionalProperties": False,
                "properties": {
                    "name": _str("Rung name: lowercase words joined by '-' (e.g. cnn, deep-residual)",
                                 pattern=RUNG_PATTERN.pattern, maxLength=40),
                    "params": {"type": "object", "description": "Parameters that differ from the base params"},
                    "seeds": {"type": "integer", "minimum": 1, "maximum": MAX_SEEDS,
                              "description": "Seeds of this rung (default: the claim's seeds)"},
                    "note": _str("One line: what this rung changes and why it is a fair test at that scale",
                                 minLength=1, maxLength=300),
                },
            },
        },
    },
}


def schema_json() -> str:
    return json.dumps(CLAIM_SCHEMA, indent=2, sort_keys=False) + "\n"


MIGRATION = "see README, 'Migrating claim files'"
MISSING_HINTS = {  # what to add, for keys that claim files written for the old format lack
    "scope": f"; add scope: one or two sentences saying what the author asserts and in what setting ({MIGRATION})",
    "tests": f"; add tests: with the words of the quote this condition tests, or move the condition "
             f"to rule.beyond if it tests something the sentence does not say ({MIGRATION})",
}


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Reference:
    title: str
    arxiv: str | None = None
    doi: str | None = None
    url: str | None = None
    note: str | None = None

    @property
    def link(self) -> str | None:
        if self.arxiv:
            return f"https://arxiv.org/abs/{self.arxiv}"
        if self.doi:
            return f"https://doi.org/{self.doi}"
        return self.url


@dataclass(frozen=True)
class Plot:
    title: str
    y: tuple[str, ...]
    labels: tuple[str, ...]
    x: str | None = None
    xlabel: str = ""
    ylabel: str = ""
    xscale: str = "linear"
    yscale: str = "linear"
    kind: str = "line"


@dataclass(frozen=True)
class AlsoQuote:
    """Another sentence of the claim's thread asserting the same thing; the verdict answers it too."""
    quote: str
    span: tuple[int, int]  # character offsets in the thread text
    line: int  # 1-based line of the thread where it starts


@dataclass(frozen=True)
class Rung:
    """One rung of a claim's ladder: the base params with ``params`` overridden (type-checked)."""

    name: str
    params: dict[str, Any]
    seeds: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Claim:
    id: str
    path: Path
    line: int  # line of the `id:` key
    title: str
    claim: str
    scope: str
    thread: str  # file name under claims/threads/, with .txt
    quote: str
    quote_span: tuple[int, int]  # character offsets of the quote in the thread text
    tags: tuple[str, ...]
    experiment: str
    params: dict[str, Any]  # as given in the file, type-checked (defaults NOT filled in)
    seeds: int
    timeout: float
    conditions: tuple[NamedCondition, ...]  # headline: they decide the verdict
    beyond: tuple[NamedCondition, ...]  # shown beside the verdict, never part of it
    expected: str | None
    explanation: str
    references: tuple[Reference, ...]
    plots: tuple[Plot, ...]
    source_text: str  # the file's text, for the site
    also: tuple[AlsoQuote, ...] = ()  # restatements of the quote elsewhere in the thread (`also:`)
    ladder: tuple[Rung, ...] = ()  # other scales, judged with the same conditions (run with --ladder)
    rung: str | None = None  # set on the claim a rung becomes (`at_rung`): the rung's name

    @property
    def quote_spans(self) -> tuple[tuple[int, int], ...]:
        """The spans of the quote and of every also-quote in the thread text."""
        return (self.quote_span,) + tuple(a.span for a in self.also)

    def rung_id(self, rung: Rung) -> str:
        """The id of this claim at ``rung``: ``<id>@<rung>`` (its results file, cache entry and JSON key)."""
        return f"{self.id}@{rung.name}"

    def at_rung(self, rung: Rung) -> "Claim":
        """This claim at one rung of its ladder: id `rung_id`, params overridden, the rung's seeds."""
        return dataclasses.replace(self, id=self.rung_id(rung), params={**self.params, **rung.params},
                                   seeds=rung.seeds or self.seeds, ladder=(), rung=rung.name)

    def run_params(self) -> dict[str, Any]:
        """Parameters the experiment is called with: its defaults, overridden by the file."""
        params = registry.get(self.experiment).defaults()
        params.update(self.params)
        return params

    def content_hash(self) -> str:
        """Hash of everything in the claim that the verdict depends on."""
        data = {
            "experiment": self.experiment,
            "params": self.run_params(),
            "seeds": self.seeds,
            "rule": [[c.name, c.text] for c in self.conditions],
            "beyond": [[c.name, c.text] for c in self.beyond],
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- helpers

def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def normalize_space(text: str) -> str:
    return " ".join(text.split())


def find_quote(thread_text: str, quote: str) -> tuple[int, int] | None:
    """Character span of ``quote`` in ``thread_text`` under the one matching rule (``bnclaims.textmatch``)."""
    return textmatch.find(thread_text, quote)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it. The link itself, not its
    target, is shown (a claim file linked from elsewhere is named by where it stands)."""
    cwd = Path.cwd().resolve()
    for candidate in (Path(os.path.abspath(path)), Path(os.path.abspath(path)).parent.resolve() / Path(path).name):
        try:
            return str(candidate.relative_to(cwd))
        except ValueError:
            continue
    return str(path)


class _Checker:
    """Walks one file's Located tree against CLAIM_SCHEMA, collecting problems."""

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []

    def add(self, where: Located | None, message: str) -> None:
        if where is None:
            self.problems.append(Problem(self.path, message))
        else:
            self.problems.append(Problem(self.path, message, where.line, where.column))

    def check(self, node: Located, schema: dict, field: str) -> bool:
        """Check one value against a schema fragment; return False (after adding a problem) if invalid."""
        if "enum" in schema:
            if node.kind != "scalar" or node.value not in schema["enum"] or isinstance(node.value, bool):
                choices = ", ".join(str(c) for c in schema["enum"])
                hint = did_you_mean(str(node.value), schema["enum"]) if isinstance(node.value, str) else ""
                self.add(node, f"{field} must be one of {choices} (found {_found(node)}{hint})")
                return False
            return True
        kind = schema.get("type")
        if kind == "string":
            if node.kind != "scalar" or not isinstance(node.value, str):
                self.add(node, f"{field} must be a string (found {_found(node)})")
                return False
            if len(node.value) < schema.get("minLength", 0) or not node.value.strip() and schema.get("minLength"):
                self.add(node, f"{field} must not be empty (found {_found(node)})")
                return False
            if "maxLength" in schema and len(node.value) > schema["maxLength"]:
                self.add(node, f"{field} must be at most {schema['maxLength']} characters (found {len(node.value)})")
                return False
            if "pattern" in schema and not re.match(schema["pattern"], node.value):
                self.add(node, f"{field} must match {schema['pattern']} (found {_found(node)})")
                return False
            return True
        if kind == "integer":
            if node.kind != "scalar" or not isinstance(node.value, int) or isinstance(node.value, bool):
                self.add(node, f"{field} must be an integer in {schema['minimum']}..{schema['maximum']} (found {_found(node)})")
                return False
            if not schema["minimum"] <= node.value <= schema["maximum"]:
                self.add(node, f"{field} must be an integer in {schema['minimum']}..{schema['maximum']} (found {_found(node)})")
                return False
            return True
        if kind == "number":
            if node.kind != "scalar" or not isinstance(node.value, (int, float)) or isinstance(node.value, bool) \
                    or not (0 < node.value <= schema["maximum"]):
                self.add(node, f"{field} must be a number of seconds in (0, {schema['maximum']}] (found {_found(node)})")
                return False
            return True
        if kind == "array":
            if node.kind != "seq":
                self.add(node, f"{field} must be a list (found {_found(node)})")
                return False
            if len(node.value) < schema.get("minItems", 0):
                self.add(node, f"{field} must have at least {schema['minItems']} item(s) (found an empty list)")
                return False
            ok = all([self.check(item, schema["items"], f"{field}[{i}]") for i, item in enumerate(node.value)])
            if ok and schema.get("uniqueItems"):
                seen = set()
                for item in node.value:
                    if item.value in seen:
                        self.add(item, f"{field} lists {item.value!r} twice")
                        ok = False
                    seen.add(item.value)
            return ok
        if kind == "object":
            if node.kind != "map":
                self.add(node, f"{field} must be a mapping (found {_found(node)})")
                return False
            props = schema.get("properties")
            ok = True
            if props is None:
                return True
            for key, (key_node, value) in node.value.items():
                if key not in props:
                    self.add(key_node, f"unknown key in {field} (found '{key}'{did_you_mean(key, props)})"
                             if field != "claim" else f"unknown key (found '{key}'{did_you_mean(key, props)})")
                    ok = False
                    continue
                sub = f"{key}" if field == "claim" else f"{field}.{key}"
                ok = self.check(value, props[key], sub) and ok
            missing = [k for k in schema.get("required", []) if k not in node.value]
            for key in missing:
                self.add(node, f"missing required key '{key}'" + ("" if field == "claim" else f" in {field}")
                         + f" (found keys: {', '.join(node.value) or 'none'})" + MISSING_HINTS.get(key, ""))
                ok = False
            return ok
        return True


def _found(node: Located) -> str:
    if node.kind == "map":
        return "a mapping"
    if node.kind == "seq":
        return "a list"
    value = node.value
    if value is None:
        return "nothing"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    return f"{type(value).__name__} {value!r}"[:60]


def _get(node: Located, key: str) -> Located | None:
    entry = node.value.get(key)
    return entry[1] if entry else None


def _key(node: Located, key: str) -> Located | None:
    entry = node.value.get(key)
    return entry[0] if entry else None


# --------------------------------------------------------------------------- loading

_OUTSIDE = object()  # a thread file that resolves (through a symlink) to outside the threads directory
_TOO_LARGE = object()  # a thread file over 1 MiB, refused unread as claim files are


def _read_thread(threads_dir: Path, thread_path: Path):
    """The thread's text; None if there is no such readable file; _OUTSIDE if it links out of threads_dir."""
    try:
        if not thread_path.resolve().is_relative_to(threads_dir.resolve()):
            return _OUTSIDE
        if thread_path.is_file() and thread_path.stat().st_size > MAX_BYTES:
            return _TOO_LARGE
        return thread_path.read_text(encoding="utf-8") if thread_path.is_file() else None
    except (OSError, RuntimeError, UnicodeDecodeError):  # RuntimeError: a symlink loop
        return None


def _load_one(path: Path, threads_dir: Path, thread_cache: dict) -> tuple[Claim | None, list[Problem]]:
    shown = display_path(path)
    try:  # as for threads: nothing outside the claims directory is read, and nothing read there is echoed
        if path.is_symlink() and not path.resolve().is_relative_to(path.parent.resolve()):
            return None, [Problem(shown, f"a link to a file outside {display_path(path.parent)}/; claim files "
                                         "must be inside the claims directory (not read)")]
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None, [Problem(shown, "a link that cannot be followed (not read)")]
    checker = _Checker(shown)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            return None, [Problem(shown, "not a regular file (expected a YAML claim file)")]
        if info.st_size > MAX_BYTES:
            return None, [Problem(shown, f"file is larger than 1 MiB (found {info.st_size} bytes)")]
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # the size can lie (/proc) or grow while we read
    except OSError as e:
        return None, [Problem(shown, f"cannot read file ({e.strerror})")]
    try:
        root = load(data)
    except YamlProblem as e:
        return None, [Problem(shown, e.message, e.line, e.column)]
    if root.kind != "map":
        return None, [Problem(shown, f"a claim file must be a YAML mapping (found {_found(root)})", root.line, root.column)]
    if not checker.check(root, CLAIM_SCHEMA, "claim"):
        # Keep going for semantic checks on the parts that did validate, so all problems show at once.
        pass
    text = data.decode("utf-8")

    def valid(key: str, kind: type) -> Located | None:
        node = _get(root, key)
        if node is None or node.kind != "scalar" or not isinstance(node.value, kind) or isinstance(node.value, bool) and kind is not bool:
            return None
        return node

    # id equals the file stem
    id_node = valid("id", str)
    if id_node is not None and ID_PATTERN.match(id_node.value) and id_node.value != path.stem:
        checker.add(id_node, f"id must equal the file name '{path.stem}' (found '{id_node.value}')")

    # experiment, params, metric names
    exp = None
    exp_node = valid("experiment", str)
    known = registry.load_all()
    if exp_node is not None:
        exp = known.get(exp_node.value)
        if exp is None:
            checker.add(exp_node, f"unknown experiment (found '{exp_node.value}'{did_you_mean(exp_node.value, known)})")
    params = _params(_get(root, "params"), exp, checker)
    base_exp = exp
    if exp is not None:  # metric and series names may follow from the params (train-compare: test_acc_<arm>)
        exp = exp.resolved(params)

    # source: thread file and quote
    thread_name, quote, quote_span, thread_text = "", "", (0, 0), None
    source = _get(root, "source")
    if source is not None and source.kind == "map":
        thread_node = _get(source, "thread")
        quote_node = _get(source, "quote")
        if thread_node is not None and isinstance(thread_node.value, str) and THREAD_PATTERN.match(thread_node.value) \
                and ".." not in thread_node.value:
            thread_name = thread_node.value if thread_node.value.endswith(".txt") else thread_node.value + ".txt"
            thread_path = threads_dir / thread_name
            if thread_name not in thread_cache:
                thread_cache[thread_name] = _read_thread(threads_dir, thread_path)
            thread_text = thread_cache[thread_name]
            if thread_text is _TOO_LARGE:
                checker.add(thread_node, f"thread file is larger than 1 MiB (found '{thread_node.value}')")
            elif thread_text is _OUTSIDE:
                checker.add(thread_node, f"thread must be a file under {display_path(threads_dir)}/ (found "
                            f"'{thread_node.value}', a link to a file outside it)")
            elif thread_text is None:
                available = sorted(p.stem for p in threads_dir.glob("*.txt")) if threads_dir.is_dir() else []
                checker.add(thread_node, f"no such thread in {display_path(threads_dir)} (found "
                            f"'{thread_node.value}'{did_you_mean(Path(thread_name).stem, available)})")
            elif quote_node is not None and isinstance(quote_node.value, str) and quote_node.value.strip():
                span = find_quote(thread_text, quote_node.value)
                if span is None:
                    hint = textmatch.closest(thread_text, quote_node.value)
                    checker.add(quote_node, f"quote not found in thread {thread_name} (found {_found(quote_node)})"
                                + (f"; {hint}" if hint else ""))
                else:
                    quote, quote_span = quote_node.value, span
        elif thread_node is not None and isinstance(thread_node.value, str):
            checker.add(thread_node, f"thread must be a file name under claims/threads/ (found {_found(thread_node)})")
    also = _also_quotes(_get(root, "also"), thread_name, thread_text if isinstance(thread_text, str) else None,
                        quote_span if quote else None, checker)

    # rule conditions: grammar, metric names, the words each headline condition tests, duplicates
    rule = _get(root, "rule")
    rule = rule if rule is not None and rule.kind == "map" else None
    headline = _rule_conditions(rule and _get(rule, "conditions"), "conditions", exp, quote, checker)
    beyond = _rule_conditions(rule and _get(rule, "beyond"), "beyond", exp, quote, checker)
    seen_holds: list[str] = []
    for item, holds_node in headline + beyond:
        if any(same_condition(item.text, other) for other in seen_holds):
            checker.add(holds_node, f"the same condition appears twice in the rule (found {item.text!r}); "
                        "one question, one condition")
        seen_holds.append(item.text)
    ladder = _ladder(_get(root, "ladder"), base_exp, params, [item for item, _ in headline + beyond], checker)

    # plots: series names
    plots: list[Plot] = []
    plots_node = _get(root, "plots")
    if plots_node is not None and plots_node.kind == "seq":
        for item in plots_node.value:
            if item.kind != "map":
                continue
            plain = item.plain()
            if not isinstance(plain.get("y"), list) or not all(isinstance(v, str) for v in plain["y"]):
                continue
            if exp is not None:
                for field in ("x", "y"):
                    node = _get(item, field)
                    names = [plain.get(field)] if field == "x" else plain["y"]
                    for name in names:
                        if name is None or not isinstance(name, str):
                            continue
                        if name not in exp.series:
                            checker.add(node, f"plot {field} must name a series of experiment '{exp.name}' (found "
                                        f"'{name}'{did_you_mean(name, exp.series)}); series: "
                                        f"{', '.join(exp.series) or 'none'}")
            labels = plain.get("labels") or plain["y"]
            if isinstance(labels, list) and len(labels) != len(plain["y"]):
                checker.add(_get(item, "labels"), f"plot labels must match y one to one (found {len(labels)} labels "
                            f"for {len(plain['y'])} series)")
            try:
                plots.append(Plot(
                    title=str(plain.get("title", "")), y=tuple(plain["y"]), labels=tuple(str(x) for x in labels),
                    x=plain.get("x"), xlabel=str(plain.get("xlabel", "")), ylabel=str(plain.get("ylabel", "")),
                    xscale=str(plain.get("xscale", "linear")), yscale=str(plain.get("yscale", "linear")),
                    kind=str(plain.get("kind", "line")),
                ))
            except TypeError:
                pass

    if checker.problems:
        return None, checker.problems
    data_plain = root.plain()
    references = tuple(
        Reference(**{k: v for k, v in ref.items()}) for ref in data_plain.get("references", [])
    )
    for ref_node in (_get(root, "references").value if _get(root, "references") else []):
        ref = ref_node.plain()
        if not any(ref.get(k) for k in ("arxiv", "doi", "url")):
            checker.add(ref_node, "reference needs one of arxiv, doi or url (found only "
                        f"{', '.join(ref) or 'nothing'})")
    if checker.problems:
        return None, checker.problems
    claim = Claim(
        id=data_plain["id"],
        path=path,
        line=_key(root, "id").line,
        title=data_plain["title"].strip(),
        claim=data_plain["claim"].strip(),
        scope=data_plain["scope"].strip(),
        thread=thread_name,
        quote=quote,
        quote_span=quote_span,
        tags=tuple(data_plain["tags"]),
        experiment=data_plain["experiment"],
        params=params,
        seeds=data_plain["seeds"],
        timeout=float(data_plain.get("timeout", DEFAULT_TIMEOUT)),
        conditions=tuple(item for item, _ in headline),
        beyond=tuple(item for item, _ in beyond),
        expected=data_plain.get("expected"),
        explanation=data_plain["explanation"].strip(),
        references=references,
        plots=tuple(plots),
        source_text=text,
        also=also,
        ladder=ladder,
    )
    return claim, []


def _also_quotes(node: Located | None, thread_name: str, thread_text: str | None,
                 quote_span: tuple[int, int] | None, checker: _Checker) -> tuple[AlsoQuote, ...]:
    """The ``also:`` quotes, each found in the claim's thread like ``source.quote``; problems go to ``checker``.
    Nothing is checked against the thread when the thread itself could not be read (that has its own problem)."""
    if node is None or node.kind != "seq" or thread_text is None:
        return ()
    out: list[AlsoQuote] = []
    taken = [("source.quote", quote_span)] if quote_span else []
    for i, item in enumerate(node.value):
        if item.kind != "map":
            continue
        thread_node, quote_node = _get(item, "thread"), _get(item, "quote")
        if thread_node is not None and isinstance(thread_node.value, str):
            name = thread_node.value if thread_node.value.endswith(".txt") else thread_node.value + ".txt"
            if name != thread_name:
                checker.add(thread_node, f"also[{i}].thread must be the claim's thread '{thread_name[:-4]}': an "
                            f"also-quote restates the claim in the thread it quotes (found '{thread_node.value}')")
                continue
        if quote_node is None or not isinstance(quote_node.value, str) or not quote_node.value.strip():
            continue  # the schema check has said what is wrong
        span = find_quote(thread_text, quote_node.value)
        if span is None:
            hint = textmatch.closest(thread_text, quote_node.value)
            checker.add(quote_node, f"also[{i}].quote not found in thread {thread_name} (found {_found(quote_node)})"
                        + (f"; {hint}" if hint else ""))
            continue
        clash = next((name for name, other in taken if span[0] < other[1] and other[0] < span[1]), None)
        if clash is not None:
            checker.add(quote_node, f"also[{i}].quote overlaps {clash}: an also-quote is another place in the "
                        f"thread (found {_found(quote_node)})")
            continue
        taken.append((f"also[{i}].quote", span))
        out.append(AlsoQuote(quote_node.value, span, thread_text.count("\n", 0, span[0]) + 1))
    return tuple(out)
def _params(node: Located | None, exp, checker: _Checker) -> dict[str, Any]:
    """The type-checked params of a ``params`` mapping (the claim's or a rung's); problems go to ``checker``."""
    params: dict[str, Any] = {}
    if exp is None or node is None or node.kind != "map":
        return params
    for name, (key_node, value_node) in node.value.items():
        spec = exp.params.get(name)
        if spec is None:
            accepted = ", ".join(exp.params) or "none"
            checker.add(key_node, f"unknown parameter for experiment '{exp.name}' (found '{name}'"
                        f"{did_you_mean(name, exp.params)}); it takes: {accepted}")
            continue
        ok, converted = registry.check_value(spec.annotation, value_node.plain())
        if not ok:
            checker.add(value_node, f"parameter '{name}' must be {spec.type_name} (found {_found(value_node)})")
        else:
            params[name] = converted
    return params


def _ladder(node: Located | None, exp, base: dict[str, Any], conditions: list[NamedCondition],
            checker: _Checker) -> tuple[Rung, ...]:
    """The rungs of ``ladder``: params checked like the base params, and every metric the rule names
    still defined at each rung (metric names may follow from the params); problems go to ``checker``."""
    if node is None or node.kind != "seq" or exp is None:
        return ()
    rungs: list[Rung] = []
    seen: set[str] = set()
    needed = sorted({m for c in conditions for m in c.condition.metric_names})
    for item in node.value:
        name_node = _get(item, "name") if item.kind == "map" else None
        if name_node is None or not isinstance(name_node.value, str) or not RUNG_PATTERN.match(name_node.value):
            continue  # the schema check has said what is wrong
        name = name_node.value
        if name in seen:
            checker.add(name_node, f"rung name used twice in ladder (found '{name}')")
        seen.add(name)
        before = len(checker.problems)
        overrides = _params(_get(item, "params"), exp, checker)
        if len(checker.problems) > before:
            continue
        if overrides and all(base.get(k, exp.params[k].default) == v for k, v in overrides.items()):
            checker.add(_get(item, "params"), f"rung '{name}' changes nothing: its params equal the base params")
            continue
        metrics = exp.resolved({**base, **overrides}).metrics
        missing = [m for m in needed if m not in metrics]
        if missing:
            checker.add(_get(item, "params"), f"rung '{name}' leaves the rule's metrics undefined (found no "
                        f"{', '.join(repr(m) for m in missing)} with these params)")
            continue
        seeds = _get(item, "seeds")
        note = _get(item, "note")
        rungs.append(Rung(name, overrides, seeds.value if seeds is not None else None,
                          " ".join(note.value.split()) if note is not None and isinstance(note.value, str) else ""))
    return tuple(rungs)


def _rule_conditions(node: Located | None, key: str, exp, quote: str,
                     checker: _Checker) -> list[tuple[NamedCondition, Located]]:
    """The valid conditions of ``rule.<key>`` with their ``holds`` nodes; problems go to ``checker``."""
    if node is None or node.kind != "seq":
        return []
    out: list[tuple[NamedCondition, Located]] = []
    names_seen: set[str] = set()
    for item in node.value:
        if item.kind != "map":
            continue
        name_node, holds_node, tests_node = _get(item, "name"), _get(item, "holds"), _get(item, "tests")
        if name_node is None or holds_node is None or not isinstance(holds_node.value, str) \
                or not isinstance(name_node.value, str) or len(holds_node.value) > MAX_RULE_LENGTH:
            continue
        if name_node.value in names_seen:
            checker.add(name_node, f"condition name used twice in rule.{key} (found '{name_node.value}')")
        names_seen.add(name_node.value)
        tests = None
        if tests_node is not None and isinstance(tests_node.value, str) and tests_node.value.strip():
            tests = " ".join(tests_node.value.split())
            if quote and textmatch.find(quote, tests) is None:
                hint = textmatch.closest(quote, tests, names=("quote", "fragment"))
                checker.add(tests_node, f"tests: must be words of the quote (found {_found(tests_node)})"
                            + (f"; {hint}" if hint else ""))
        try:
            condition = parse_condition(holds_node.value)
        except RuleSyntaxError as e:
            checker.add(holds_node, f"invalid rule: {e.message} at character {e.offset + 1} of {holds_node.value!r}")
            continue
        if exp is not None:
            bad = False
            for metric in condition.metric_names:
                if metric in exp.series:
                    checker.add(holds_node, f"'{metric}' is a series (for plots), rules need a scalar metric "
                                f"(found '{metric}'); metrics: {', '.join(exp.metrics)}")
                    bad = True
                elif metric not in exp.metrics:
                    checker.add(holds_node, f"unknown metric for experiment '{exp.name}' (found '{metric}'"
                                f"{did_you_mean(metric, exp.metrics)}); metrics: {', '.join(exp.metrics)}")
                    bad = True
            if bad:
                continue
        out.append((NamedCondition(name_node.value, condition, tests), holds_node))
    return out


def claim_files(paths: list[Path]) -> list[Path]:
    """Expand directories to their ``*.yaml`` files (not recursing into threads/), sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.glob("*.yaml") if p.is_file()))
            out.extend(sorted(p for p in path.glob("*.yml") if p.is_file()))
        else:
            out.append(path)
    return out


def threads_dir_for(path: Path) -> Path:
    return path.parent / "threads"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _printable(problem: Problem) -> Problem:
    """The problem with control characters escaped: it quotes the file, and a line break or a terminal
    escape sequence from there would break its one line (or drive the terminal)."""
    def clean(text: str) -> str:
        return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)

    return dataclasses.replace(problem, path=clean(problem.path), message=clean(problem.message))


def load_claims(paths: list[Path], threads_dir: Path | None = None) -> tuple[list[Claim], list[Problem]]:
    """Load every claim file under ``paths``; return (valid claims, problems of every invalid file)."""
    claims: list[Claim] = []
    problems: list[Problem] = []
    thread_caches: dict[Path, dict] = {}
    seen_ids: dict[str, Path] = {}
    for path in claim_files(paths):
        tdir = threads_dir or threads_dir_for(path)
        claim, found = _load_one(path, tdir, thread_caches.setdefault(tdir, {}))
        if claim is not None and claim.id in seen_ids:
            found = [Problem(display_path(path), f"claim id already used by {display_path(seen_ids[claim.id])} "
                             f"(found '{claim.id}')", claim.line, 1)]
            claim = None
        problems.extend(_printable(p) for p in found)
        if claim is not None:
            seen_ids[claim.id] = path
            claims.append(claim)
    return claims, problems


def thread_text(claim: Claim) -> str:
    return (threads_dir_for(claim.path) / claim.thread).read_text(encoding="utf-8")
