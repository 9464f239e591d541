"""Sentence maps and claim coverage: how much of what a thread asserts has been checked.

A thread is split into sentences by ``split_sentences`` (deterministic; rules below). A
*sentence map* (``claims/threads/<thread>.map.yaml``, optional) classifies every sentence:

* ``claim: <id>`` or ``claim: [<id>, ...]`` — tested by those claims (the quote or one of the
  ``also:`` quotes of each lies in the sentence, or spans it; every quote of a claim is mapped);
* ``testable: <note>`` — an experiment could check it; the note says what it would check;
* ``not-testable: <reason>`` — one of ``NOT_TESTABLE``, with an optional ``note:``.

Independently, ``question: true`` marks the asker's questions. Each entry is keyed by the
sentence's line and text (compared under the quote-matching fold of ``bnclaims.textmatch``),
so an edit to the thread shows up as unmapped and stale entries.

Coverage of a thread = tested / (tested + testable-but-untested); not-testable sentences are
left out, as coverage.py leaves out excluded lines.

Splitting rules: each non-blank line is split at ``.``, ``?`` or ``!`` (with any closing
quotes or brackets after it) followed by whitespace and a capital letter, digit, opening quote
``$`` or ``\\``; never inside inline math (``$...$``, ``$$...$$``, ``\\(...\\)``),
inline code (backticks), or a quotation ("...", “...”) on the same line; never after an
abbreviation (e.g., i.e., etc., vs., w.r.t., cf., Fig., al., approx.) or a list number at the
start of a line ("1."). A piece with no letter or digit (a full stop alone on a line) is no sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bnclaims import textmatch
from bnclaims.companions import companions, get, read_mapping
from bnclaims.errors import Problem
from bnclaims.yamlpos import Located

NOT_TESTABLE = {
    "opinion": "a judgement or preference, not a statement about what happens",
    "thanks": "thanks, greetings or sign-offs",
    "meta": "about the thread itself: votes, headings, site boilerplate, who said what",
    "question-only": "a question that asserts nothing beyond what other sentences say",
    "definition-restated": "restates the definition of batch norm (true by definition)",
    "vague": "too vague to turn into a measurement",
    "outside-scope": "about something other than batch norm's behaviour (a course, a video, a person)",
    "math": "an equation or derivation step, checked by the sentences around it",
}
MAP_SUFFIX = ".map.yaml"
_ABBREVIATIONS = {"e.g", "i.e", "etc", "vs", "w.r.t", "cf", "fig", "eq", "al", "approx", "no", "dr", "mr",
                  "mrs", "ms", "prof", "resp", "viz", "ca"}
_OPEN = "\"'“‘$\\"  # may start a sentence after a boundary (an opening bracket does not: "(e.g. …)")
_CLOSE = "\"'”’)]}"
_BOUNDARY = re.compile(r"[.?!]+[" + re.escape(_CLOSE) + r"]*(?=\s+[A-Z0-9" + re.escape(_OPEN) + r"])")


@dataclass(frozen=True)
class Sentence:
    line: int  # 1-based line in the thread
    start: int  # character offsets in the whole thread text
    end: int
    text: str

    @property
    def key(self) -> str:
        return textmatch.normalize(self.text)


def _protected(line: str) -> list[tuple[int, int]]:
    """Spans of a line inside which no sentence ends: math, code, quotations."""
    spans = []
    for pattern in (r"\$\$.+?\$\$", r"(?<!\\)\$.+?(?<!\\)\$", r"\\\(.+?\\\)", r"`[^`]+`", r"“[^”]*”", r'"[^"\n]*"'):
        spans.extend((m.start(), m.end()) for m in re.finditer(pattern, line))
    return spans


def _split_line(line: str) -> list[tuple[int, int]]:
    protected = _protected(line)
    cuts = []
    for match in _BOUNDARY.finditer(line):
        at = match.start()
        if any(a < at < b - 1 for a, b in protected):
            continue
        word = re.search(r"(\S+)$", line[:at])
        token = word.group(1).lower().lstrip("\"'“‘([{") if word else ""
        if match.group().startswith(".") and (token in _ABBREVIATIONS
                                               or (re.fullmatch(r"\d+", token) and not line[:word.start()].strip())):
            continue
        cuts.append(match.end())
    pieces, start = [], 0
    for cut in cuts + [len(line)]:
        piece = line[start:cut]
        if re.search(r"\w", piece):  # a piece of punctuation alone (a line broken before its full stop) is no sentence
            lead = len(piece) - len(piece.lstrip())
            pieces.append((start + lead, start + len(piece.rstrip())))
        start = cut
    return pieces


def split_sentences(text: str) -> list[Sentence]:
    """Every sentence of ``text`` in order (see the module docstring for the rules)."""
    out, offset = [], 0
    for number, line in enumerate(text.split("\n"), 1):
        for a, b in _split_line(line):
            out.append(Sentence(number, offset + a, offset + b, line[a:b]))
        offset += len(line) + 1
    return out


# --------------------------------------------------------------------------- maps

@dataclass(frozen=True)
class Entry:
    sentence: Sentence
    kind: str  # "claim" | "testable" | "not-testable"
    claims: tuple[str, ...] = ()
    note: str = ""
    reason: str = ""
    question: bool = False


@dataclass(frozen=True)
class SentenceMap:
    thread: str  # thread file name, with .txt
    path: Path
    entries: tuple[Entry, ...]

    def count(self, kind: str) -> int:
        return sum(1 for e in self.entries if e.kind == kind)

    @property
    def tested(self) -> int:
        return self.count("claim")

    @property
    def untested(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.kind == "testable")

    @property
    def percent(self) -> float | None:
        total = self.tested + len(self.untested)
        return 100.0 * self.tested / total if total else None



def load_map(path: Path, thread_name: str, thread_text: str, claims_by_id: dict) -> tuple[SentenceMap | None, list[Problem]]:
    """Load and validate one sentence map against its thread and the claims quoting it."""
    from bnclaims.claims import did_you_mean, display_path

    shown = display_path(path)
    problems: list[Problem] = []

    def add(node: Located | None, message: str) -> None:
        problems.append(Problem(shown, message, node.line if node else None, node.column if node else None))

    root, problems = read_mapping(path, shown, "'thread' and 'sentences'")
    if root is None:
        return None, problems
    for key, (key_node, _) in root.value.items():
        if key not in ("thread", "sentences"):
            add(key_node, f"unknown key (found '{key}'{did_you_mean(key, ['thread', 'sentences'])})")
    thread_node, seq = get(root, "thread"), get(root, "sentences")
    stem = thread_name[:-4]
    if thread_node is None or thread_node.value != stem:
        add(thread_node or root, f"thread must name this map's thread '{stem}' (found "
            f"{thread_node.value if thread_node else 'nothing'!r})")
    if seq is None or seq.kind != "seq":
        add(seq or root, "sentences must be a list of entries (line, text and a class)")
        return None, problems

    sentences = split_sentences(thread_text)
    by_key: dict[tuple[int, str], Sentence] = {(s.line, s.key): s for s in sentences}
    mapped: dict[tuple[int, str], Located] = {}
    entries: list[Entry] = []
    for item in seq.value:
        if item.kind != "map":
            add(item, "a sentence entry must be a mapping (line, text and one of claim, testable, not-testable)")
            continue
        allowed = ("line", "text", "claim", "testable", "not-testable", "note", "question")
        for key, (key_node, _) in item.value.items():
            if key not in allowed:
                add(key_node, f"unknown key in a sentence entry (found '{key}'{did_you_mean(key, allowed)})")
        line_node, text_node = get(item, "line"), get(item, "text")
        if line_node is None or not isinstance(line_node.value, int) or isinstance(line_node.value, bool) \
                or text_node is None or not isinstance(text_node.value, str):
            add(item, "a sentence entry needs line (an integer) and text (the sentence)")
            continue
        key = (line_node.value, textmatch.normalize(text_node.value))
        sentence = by_key.get(key)
        if sentence is None:
            on_line = [s for s in sentences if s.line == line_node.value]
            hint = f"; line {line_node.value} has: " + " | ".join(repr(s.text[:60]) for s in on_line) if on_line \
                else f"; line {line_node.value} has no sentence"
            add(text_node, f"no such sentence on line {line_node.value} of {thread_name} (the thread changed, "
                           f"or the text differs){hint}")
            continue
        if key in mapped:
            add(text_node, f"sentence mapped twice (first on line {mapped[key].line} of this map)")
            continue
        mapped[key] = item
        kinds = [k for k in ("claim", "testable", "not-testable") if k in item.value]
        if len(kinds) != 1:
            add(item, "a sentence entry needs exactly one of claim, testable, not-testable "
                      f"(found {', '.join(kinds) or 'none'})")
            continue
        kind = kinds[0]
        value = get(item, kind)
        question_node = get(item, "question")
        question = bool(question_node and question_node.value is True)
        if question_node is not None and not isinstance(question_node.value, bool):
            add(question_node, f"question must be true or false (found {question_node.value!r})")
        note_node = get(item, "note")
        note = note_node.value if note_node is not None and isinstance(note_node.value, str) else ""
        if kind == "claim":
            ids = [value.value] if value.kind == "scalar" else [v.value for v in value.value] if value.kind == "seq" else []
            if not ids or not all(isinstance(i, str) for i in ids):
                add(value, "claim must be a claim id or a list of claim ids")
                continue
            for claim_id in ids:
                claim = claims_by_id.get(claim_id)
                if claim is None:
                    add(value, f"unknown claim (found '{claim_id}'{did_you_mean(claim_id, claims_by_id)})")
                elif claim.thread != thread_name:
                    add(value, f"claim '{claim_id}' quotes thread {claim.thread}, not {thread_name}")
                elif not _quoted_in(claim, sentence):
                    add(value, f"the quote of claim '{claim_id}' does not lie in this sentence"
                        + (", nor does any of its also-quotes" if claim.also else ""))
            entries.append(Entry(sentence, kind, claims=tuple(ids), note=note, question=question))
        elif kind == "testable":
            if not isinstance(value.value, str) or not value.value.strip():
                add(value, "testable needs a one-line note of what an experiment would check")
                continue
            entries.append(Entry(sentence, kind, note=" ".join(value.value.split()), question=question))
        else:
            if value.value not in NOT_TESTABLE:
                add(value, f"not-testable needs a reason, one of {', '.join(NOT_TESTABLE)} (found "
                           f"{value.value!r}{did_you_mean(str(value.value), NOT_TESTABLE)})")
                continue
            entries.append(Entry(sentence, kind, reason=value.value, note=note, question=question))
    for sentence in sentences:
        if (sentence.line, sentence.key) not in mapped:
            add(seq, f"sentence not mapped: line {sentence.line}: {sentence.text[:80]!r}")
    named = {c for e in entries for c in e.claims}
    for claim in claims_by_id.values():
        if claim.thread != thread_name or "draft" in claim.tags:
            continue
        if claim.id not in named:
            add(seq, f"claim '{claim.id}' quotes this thread but no sentence names it")
            continue
        # every quote of the claim (the quote and each also-quote) is named on a sentence it lies in
        for what, span in [("its quote", claim.quote_span)] + [("an also-quote", a.span) for a in claim.also]:
            if any(claim.id in e.claims and _overlaps(span, e.sentence) for e in entries):
                continue
            there = [e for e in entries if _overlaps(span, e.sentence)]
            if there:
                found = f"claim: {', '.join(there[0].claims)}" if there[0].kind == "claim" else \
                    f"{there[0].kind}: {there[0].reason}" if there[0].reason else there[0].kind
                add(mapped[(there[0].sentence.line, there[0].sentence.key)],
                    f"claim '{claim.id}' has {what} in this sentence, which does not name it (found {found})")
            else:
                lines = ", ".join(str(line) for line in sorted({s.line for s in sentences if _overlaps(span, s)}))
                add(seq, f"claim '{claim.id}' has {what} on line {lines or '?'} of {thread_name}, "
                         "which no entry names; name the claim on that sentence")
    if problems:
        return None, problems
    entries.sort(key=lambda e: e.sentence.start)
    return SentenceMap(thread_name, path, tuple(entries)), []


def _overlaps(span: tuple[int, int], sentence: Sentence) -> bool:
    return span[0] < sentence.end and sentence.start < span[1]


def _quoted_in(claim, sentence: Sentence) -> bool:
    """Whether the claim's quote, or one of its also-quotes, lies in (or spans) the sentence."""
    return any(_overlaps(span, sentence) for span in claim.quote_spans)


def load_maps(claims_dir: Path, claims: list) -> tuple[dict[str, SentenceMap], list[Problem]]:
    """Every ``<thread>.map.yaml`` under ``claims_dir/threads``, validated; {thread name: map}."""
    maps: dict[str, SentenceMap] = {}
    problems: list[Problem] = []
    by_id = {c.id: c for c in claims}
    for path, thread_name, text, problem in companions(claims_dir, MAP_SUFFIX, "sentence map"):
        if problem is not None:
            problems.append(problem)
            continue
        sentence_map, found = load_map(path, thread_name, text, by_id)
        problems.extend(found)
        if sentence_map is not None:
            maps[thread_name] = sentence_map
    return maps, problems


def skeleton(thread_name: str, text: str, claims: list) -> str:
    """A map to start from: every sentence with its line and text, ``claim:`` filled in where a
    claim's quote lies in it, and no class elsewhere (so ``check`` fails until each is classified)."""
    import json

    lines = [f"# Sentence map of {thread_name}: classify every sentence as claim, testable or not-testable.",
             f"# Reasons for not-testable: {', '.join(NOT_TESTABLE)}. Mark the asker's questions question: true.",
             f"thread: {thread_name[:-4]}", "sentences:"]
    for sentence in split_sentences(text):
        ids = sorted(c.id for c in claims if c.thread == thread_name and _quoted_in(c, sentence))
        lines.append(f"  - line: {sentence.line}")
        lines.append(f"    text: {json.dumps(sentence.text, ensure_ascii=False)}")
        if ids:
            lines.append(f"    claim: [{', '.join(ids)}]")
        if sentence.text.rstrip().endswith("?"):
            lines.append("    question: true")
    return "\n".join(lines) + "\n"


def report(maps: dict[str, SentenceMap]) -> dict:
    """The coverage report as data (the ``--json`` form)."""
    threads = []
    for name, m in sorted(maps.items()):
        threads.append({
            "thread": name[:-4], "sentences": len(m.entries), "testable": m.tested + len(m.untested),
            "tested": m.tested, "not_testable": m.count("not-testable"), "questions": sum(e.question for e in m.entries),
            "percent": m.percent,
            "untested": [{"line": e.sentence.line, "text": e.sentence.text, "note": e.note} for e in m.untested],
        })
    tested = sum(t["tested"] for t in threads)
    testable = sum(t["testable"] for t in threads)
    return {"threads": threads, "tested": tested, "testable": testable,
            "percent": 100.0 * tested / testable if testable else None}
