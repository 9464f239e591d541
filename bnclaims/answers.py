"""Answer files: each thread's questions answered from the evidence, with numbers that cannot go stale.

``claims/threads/<thread>.answer.yaml`` (optional)::

    thread: 000_9d0fa3abc03cef76
    written_against:                 # the verdicts the prose was written against
      gamma-beta-settle-early: refuted
    summary: >
      In short: ... [[gamma-beta-settle-early]] ...
    questions:
      - quote: "Does this mean beta and gamma reach roughly optimal values early"
        answer: >
          No. ... settle after [[gamma-beta-settle-early:settle_gb_lr0p1]] of training ...

References inside ``summary`` and ``answer`` text (nothing else in the file is markup; no author
text is ever treated as HTML or as a template):

* ``[[claim-id]]``         the claim's verdict as a badge, linking to its page;
* ``[[claim-id:metric]]``  the metric's mean with its 95 % interval, as on the claim page;
* ``[[claim-id#2]]``       the verdict of the claim's second headline condition;
* ``[[claim-id#b1]]``      the verdict of its first ``beyond`` condition.

``bnclaims check`` resolves every reference (with "did you mean"), requires every quote to be found
in the thread (matched like claim quotes), and warns (exit 0) about a figure typed in the prose (a
decimal number or a percentage outside a reference: measured numbers belong in references) and
about a claim whose declared ``expected`` verdict differs from ``written_against`` (the evidence
changed since the answer was written). On the site, an answer whose claims' verdicts differ from
``written_against`` says so at the top, and a reference to a claim that errored or did not run is
marked (and makes ``build`` exit 1; the site is still written).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bnclaims import textmatch
from bnclaims.companions import companions, get, read_mapping
from bnclaims.errors import Problem
from bnclaims.yamlpos import Located

ANSWER_SUFFIX = ".answer.yaml"
REFERENCE = re.compile(r"\[\[([^\[\]\n]{1,200})\]\]")
_REF_BODY = re.compile(r"^(?P<id>[a-z0-9]+(?:-[a-z0-9]+)*)(?::(?P<metric>[A-Za-z_][A-Za-z0-9_]*)|#(?P<beyond>b?)(?P<n>\d{1,3}))?$")
TYPED_FIGURE = re.compile(r"(?<![\w.])(?:\d+(?:\.\d+)?\s?%|\d+\.\d+)")
VERDICT_WORDS = ("supported", "refuted", "mixed", "inconclusive")


@dataclass(frozen=True)
class Reference:
    text: str  # as written, without the brackets
    claim_id: str
    metric: str | None = None
    condition: int | None = None  # 1-based
    beyond: bool = False


@dataclass(frozen=True)
class Question:
    quote: str
    span: tuple[int, int]  # in the thread text
    answer: str


@dataclass(frozen=True)
class Answer:
    thread: str  # thread file name, with .txt
    path: Path
    summary: str
    questions: tuple[Question, ...]
    written_against: dict[str, str]

    def references(self) -> list[Reference]:
        texts = [self.summary] + [q.answer for q in self.questions]
        return [ref for text in texts for ref in (parse_reference(m.group(1)) for m in REFERENCE.finditer(text)) if ref]


def parse_reference(body: str) -> Reference | None:
    match = _REF_BODY.match(body.strip())
    if match is None:
        return None
    n = match.group("n")
    return Reference(body.strip(), match.group("id"), match.group("metric"), int(n) if n else None,
                     bool(match.group("beyond")))



def _check_text(text: str, node: Located, claims_by_id: dict, add, warn) -> None:
    """Resolve the references in one text field; warn about figures typed outside references."""
    from bnclaims import experiments as registry
    from bnclaims.claims import did_you_mean

    for match in REFERENCE.finditer(text):
        ref = parse_reference(match.group(1))
        if ref is None:
            add(node, f"a reference must be [[claim-id]], [[claim-id:metric]], [[claim-id#N]] or "
                      f"[[claim-id#bN]] (found '[[{match.group(1)[:60]}]]')")
            continue
        claim = claims_by_id.get(ref.claim_id)
        if claim is None:
            add(node, f"unknown claim in '[[{ref.text}]]' (found '{ref.claim_id}'"
                      f"{did_you_mean(ref.claim_id, claims_by_id)})")
            continue
        if ref.metric is not None:
            exp = registry.load_all().get(claim.experiment)
            metrics = exp.resolved(claim.run_params()).metrics if exp else {}
            if ref.metric not in metrics:
                add(node, f"unknown metric of claim '{claim.id}' in '[[{ref.text}]]' (found '{ref.metric}'"
                          f"{did_you_mean(ref.metric, metrics)})")
        if ref.condition is not None:
            conditions = claim.beyond if ref.beyond else claim.conditions
            kind = "beyond" if ref.beyond else "headline"
            if not 1 <= ref.condition <= len(conditions):
                add(node, f"claim '{claim.id}' has {len(conditions)} {kind} condition(s) (found '[[{ref.text}]]')")
    prose = REFERENCE.sub(" ", text)
    for match in TYPED_FIGURE.finditer(prose):
        warn(node, f"a figure typed in the prose (found '{match.group()}'); take measured numbers from the "
                   "results with [[claim-id:metric]]")
        break  # one warning per field is enough to find it


def load_answer(path: Path, thread_name: str, thread_text: str, claims_by_id: dict,
                ) -> tuple[Answer | None, list[Problem], list[Problem]]:
    """Load and check one answer file: (answer, problems, warnings)."""
    from bnclaims.claims import did_you_mean, display_path

    shown = display_path(path)
    problems: list[Problem] = []
    warnings: list[Problem] = []

    def add(node: Located | None, message: str) -> None:
        problems.append(Problem(shown, message, node.line if node else None, node.column if node else None))

    def warn(node: Located | None, message: str) -> None:
        warnings.append(Problem(shown, "warning: " + message, node.line if node else None,
                                node.column if node else None))

    root, unreadable = read_mapping(path, shown, "thread, written_against, summary and questions")
    if root is None:
        return None, unreadable, []
    keys = ("thread", "written_against", "summary", "questions")
    for key, (key_node, _) in root.value.items():
        if key not in keys:
            add(key_node, f"unknown key (found '{key}'{did_you_mean(key, keys)})")
    for key in keys:
        if key not in root.value:
            add(root, f"missing required key '{key}' (found keys: {', '.join(root.value) or 'none'})")
    thread_node = get(root, "thread")
    if thread_node is not None and thread_node.value != thread_name[:-4]:
        add(thread_node, f"thread must name this file's thread '{thread_name[:-4]}' (found {thread_node.value!r})")

    written: dict[str, str] = {}
    against = get(root, "written_against")
    if against is not None:
        if against.kind != "map":
            add(against, "written_against must map claim ids to the verdicts the answer was written against")
        else:
            for claim_id, (key_node, value) in against.value.items():
                if claim_id not in claims_by_id:
                    add(key_node, f"unknown claim (found '{claim_id}'{did_you_mean(str(claim_id), claims_by_id)})")
                elif value.value not in VERDICT_WORDS:
                    add(value, f"a verdict must be one of {', '.join(VERDICT_WORDS)} (found {value.value!r})")
                else:
                    written[claim_id] = value.value
                    expected = claims_by_id[claim_id].expected
                    if expected is not None and expected != value.value:
                        warn(value, f"the evidence changed since this answer was written: claim '{claim_id}' "
                                    f"now expects {expected} (written against {value.value}); update the answer "
                                    "and written_against")

    summary = ""
    summary_node = get(root, "summary")
    if summary_node is not None:
        if not isinstance(summary_node.value, str) or not summary_node.value.strip():
            add(summary_node, "summary must be a few sentences of text")
        else:
            summary = summary_node.value.strip()
            _check_text(summary, summary_node, claims_by_id, add, warn)

    questions: list[Question] = []
    seq = get(root, "questions")
    if seq is not None and seq.kind != "seq":
        add(seq, "questions must be a list of {quote, answer}")
    elif seq is not None:
        for item in seq.value:
            quote_node, answer_node = get(item, "quote"), get(item, "answer")
            if item.kind != "map" or quote_node is None or answer_node is None:
                add(item, "a question needs quote (the asker's words) and answer (the reply)")
                continue
            for key, (key_node, _) in item.value.items():
                if key not in ("quote", "answer"):
                    add(key_node, f"unknown key in a question (found '{key}'{did_you_mean(key, ['quote', 'answer'])})")
            if not isinstance(quote_node.value, str) or not isinstance(answer_node.value, str) \
                    or not answer_node.value.strip():
                add(item, "quote and answer must be text")
                continue
            span = textmatch.find(thread_text, quote_node.value)
            if span is None:
                hint = textmatch.closest(thread_text, quote_node.value)
                add(quote_node, f"quote not found in thread {thread_name} (found {quote_node.value[:40]!r})"
                    + (f"; {hint}" if hint else ""))
                continue
            text = answer_node.value.strip()
            _check_text(text, answer_node, claims_by_id, add, warn)
            questions.append(Question(quote_node.value.strip(), span, text))
    named = {ref.claim_id for text in [summary] + [q.answer for q in questions]
             for ref in (parse_reference(m.group(1)) for m in REFERENCE.finditer(text)) if ref}
    for claim_id in sorted(named - set(written)):
        if claim_id in claims_by_id:
            add(against or root, f"written_against must give the verdict of every referenced claim "
                                 f"(missing '{claim_id}')")
    if problems:
        return None, problems, warnings
    return Answer(thread_name, path, summary, tuple(questions), written), [], warnings


def load_answers(claims_dir: Path, claims: list) -> tuple[dict[str, Answer], list[Problem], list[Problem]]:
    """Every ``<thread>.answer.yaml`` under ``claims_dir/threads``: (answers by thread, problems, warnings)."""
    answers: dict[str, Answer] = {}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    by_id = {c.id: c for c in claims}
    for path, thread_name, text, problem in companions(claims_dir, ANSWER_SUFFIX, "answer file"):
        if problem is not None:
            problems.append(problem)
            continue
        answer, found, warned = load_answer(path, thread_name, text, by_id)
        problems += found
        warnings += warned
        if answer is not None:
            answers[thread_name] = answer
    return answers, problems, warnings


def broken(answers: dict[str, Answer], results: dict) -> list[str]:
    """References to claims whose result is an error or missing: one line each (``build`` exits 1)."""
    out = []
    for answer in answers.values():
        for ref in answer.references():
            result = results.get(ref.claim_id)
            if result is None or result.status == "error":
                state = "did not run" if result is None else "errored"
                out.append(f"{answer.path.name}: [[{ref.text}]] refers to a claim that {state}")
    return sorted(set(out))
