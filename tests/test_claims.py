"""Claim-file loading: every class of bad input gets one exact line with file:line:col."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

import toy_experiments  # noqa: F401 - registers toy-normal and toy-fault
from bnclaims.claims import find_quote, load_claims, schema_json

THREADS = Path(__file__).resolve().parents[1] / "claims" / "threads"

VALID = """\
id: {id}
title: Toy claim
claim: x is positive on average
source:
  thread: 000_9d0fa3abc03cef76
  quote: "With fluctuating beta and gamma, the distribution also fluctuates."
tags: [toy, fast]
experiment: toy-normal
params:
  mu: 1.0
  n_points: 4
seeds: 5
rule:
  conditions:
    - name: positive
      holds: mean(x) > 0
      tests: "With fluctuating"
expected: supported
explanation: A toy.
scope: A toy scope.
references:
  - title: Ioffe and Szegedy 2015
    arxiv: "1502.03167"
plots:
  - title: curve
    x: steps
    y: [curve]
"""


@pytest.fixture
def claims_dir(tmp_path: Path) -> Path:
    d = tmp_path / "claims"
    shutil.copytree(THREADS, d / "threads")
    return d


def write(claims_dir: Path, name: str, text: str | bytes) -> Path:
    path = claims_dir / f"{name}.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def problems_of(claims_dir: Path, name: str, text: str | bytes) -> list[str]:
    path = write(claims_dir, name, text)
    claims, problems = load_claims([path])
    assert not claims
    assert problems, "expected at least one problem"
    return [str(p).replace(str(path), f"{name}.yaml") for p in problems]


def test_valid_claim_loads(claims_dir):
    path = write(claims_dir, "toy-a", VALID.format(id="toy-a"))
    claims, problems = load_claims([path])
    assert problems == []
    (claim,) = claims
    assert claim.id == "toy-a"
    assert claim.line == 1
    assert claim.params == {"mu": 1.0, "n_points": 4}
    assert claim.run_params()["sd"] == 1.0  # default filled in
    assert claim.tags == ("toy", "fast")
    assert claim.thread == "000_9d0fa3abc03cef76.txt"
    text = (THREADS / claim.thread).read_text(encoding="utf-8")
    start, end = claim.quote_span
    assert " ".join(text[start:end].split()) == claim.quote


def set_line(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BASE = VALID.format(id="bad")

CASES = {
    "syntax error": (
        set_line(BASE, "tags: [toy, fast]", "tags: [toy, fast"),
        "bad.yaml:7:7: invalid YAML: unclosed '[': the list that starts here has no ']' before line 8 (found ':')",
    ),
    "wrong type": (
        set_line(BASE, "title: Toy claim", "title: [Toy]"),
        "bad.yaml:2:8: title must be a string (found a list)",
    ),
    "unknown key": (
        set_line(BASE, "seeds: 5", "sedes: 5"),
        "bad.yaml:12:1: unknown key (found 'sedes'; did you mean 'seeds'?)",
    ),
    "unknown experiment": (
        set_line(BASE, "experiment: toy-normal", "experiment: toy-normall"),
        "bad.yaml:8:13: unknown experiment (found 'toy-normall'; did you mean 'toy-normal'?)",
    ),
    "unknown param": (
        set_line(BASE, "  mu: 1.0", "  muu: 1.0"),
        "bad.yaml:10:3: unknown parameter for experiment 'toy-normal' (found 'muu'; did you mean 'mu'?); "
        "it takes: mu, nu, sd, n_points, mode",
    ),
    "wrong param type": (
        set_line(BASE, "  n_points: 4", "  n_points: 4.5"),
        "bad.yaml:11:13: parameter 'n_points' must be int (found float 4.5)",
    ),
    "bool is not an int param": (
        set_line(BASE, "  n_points: 4", "  n_points: true"),
        "bad.yaml:11:13: parameter 'n_points' must be int (found bool True)",
    ),
    "literal param": (
        set_line(BASE, "  n_points: 4", "  mode: shiftd"),
        "bad.yaml:11:9: parameter 'mode' must be one of 'plain', 'shifted' (found 'shiftd')",
    ),
    "unknown metric": (
        set_line(BASE, "holds: mean(x) > 0", "holds: mean(xx) > 0"),
        "bad.yaml:16:14: unknown metric for experiment 'toy-normal' (found 'xx'; did you mean 'x'?); metrics: x, y",
    ),
    "series in rule": (
        set_line(BASE, "holds: mean(x) > 0", "holds: mean(curve) > 0"),
        "bad.yaml:16:14: 'curve' is a series (for plots), rules need a scalar metric (found 'curve'); metrics: x, y",
    ),
    "rule syntax": (
        set_line(BASE, "holds: mean(x) > 0", "holds: mean(x) >> 0"),
        "bad.yaml:16:14: invalid rule: expected a number (found '>') at character 10 of 'mean(x) >> 0'",
    ),
    "rule statistic": (
        set_line(BASE, "holds: mean(x) > 0", "holds: avg(x) > 0"),
        "bad.yaml:16:14: invalid rule: unknown statistic (found 'avg'); expected one of mean, median, geomean, "
        "min, max at character 1 of 'avg(x) > 0'",
    ),
    "missing quote": (
        set_line(BASE, 'quote: "With fluctuating beta and gamma, the distribution also fluctuates."',
                 'quote: "With fluctuating beta and gamma, the distribution never fluctuates."'),
        "bad.yaml:6:10: quote not found in thread 000_9d0fa3abc03cef76.txt "
        "(found 'With fluctuating beta and gamma, the ...')",
    ),
    "unknown thread": (
        set_line(BASE, "thread: 000_9d0fa3abc03cef76", "thread: 000_9d0fa3abc03cef77"),
        "bad.yaml:5:11: no such thread in ",
    ),
    "thread path trick": (
        set_line(BASE, "thread: 000_9d0fa3abc03cef76", "thread: ../../etc/passwd"),
        "bad.yaml:5:11: source.thread must match",
    ),
    "bad id": (
        set_line(BASE, "id: bad", "id: Bad_ID"),
        "bad.yaml:1:5: id must match ^[a-z0-9]+(?:-[a-z0-9]+)*$ (found 'Bad_ID')",
    ),
    "id not file name": (
        set_line(BASE, "id: bad", "id: other"),
        "bad.yaml:1:5: id must equal the file name 'bad' (found 'other')",
    ),
    "python tag": (
        set_line(BASE, "title: Toy claim", "title: !!python/object/apply:os.system [echo hacked]"),
        "bad.yaml:2:8: YAML tag is not allowed (found !!python/object/apply:os.system)",
    ),
    "huge seeds": (
        set_line(BASE, "seeds: 5", "seeds: 10000000000"),
        "bad.yaml:12:8: seeds must be an integer in 1..10000 (found int 10000000000)",
    ),
    "zero seeds": (
        set_line(BASE, "seeds: 5", "seeds: 0"),
        "bad.yaml:12:8: seeds must be an integer in 1..10000 (found int 0)",
    ),
    "bool seeds": (
        set_line(BASE, "seeds: 5", "seeds: yes"),
        "bad.yaml:12:8: seeds must be an integer in 1..10000 (found bool True)",
    ),
    "duplicate key": (
        BASE + "seeds: 7\n",
        "bad.yaml:28:1: duplicate key 'seeds' (first defined on line 12)",
    ),
    "missing key": (
        set_line(BASE, "explanation: A toy.\n", ""),
        "bad.yaml:1:1: missing required key 'explanation'",
    ),
    "bad expected": (
        set_line(BASE, "expected: supported", "expected: suported"),
        "bad.yaml:18:11: expected must be one of supported, refuted, mixed, inconclusive "
        "(found 'suported'; did you mean 'supported'?)",
    ),
    "alias": (
        set_line(BASE, "tags: [toy, fast]", "tags: &t [toy, fast]\nexplanation2: *t"),
        "bad.yaml:8:15: YAML aliases are not allowed in claim files",
    ),
    "plot series": (
        set_line(BASE, "    y: [curve]", "    y: [curv]"),
        "bad.yaml:27:8: plot y must name a series of experiment 'toy-normal' (found 'curv'; "
        "did you mean 'curve'?); series: curve, steps",
    ),
    "reference without link": (
        set_line(BASE, '    arxiv: "1502.03167"', "    note: no link"),
        "bad.yaml:22:5: reference needs one of arxiv, doi or url (found only title, note)",
    ),
    "bad arxiv id": (
        set_line(BASE, '    arxiv: "1502.03167"', '    arxiv: "javascript:alert(1)"'),
        "bad.yaml:23:12: references[0].arxiv must match",
    ),
    "not a mapping": (
        "- just\n- a list\n",
        "bad.yaml:1:1: a claim file must be a YAML mapping (found a list)",
    ),
    "two documents": (
        BASE + "---\nid: again\n",
        "bad.yaml:28:1: invalid YAML: more than one YAML document (expected exactly one)",
    ),
    "empty file": (
        "",
        "bad.yaml: file is empty (expected a claim: a YAML mapping)",
    ),
    "invalid utf-8": (
        BASE.encode().replace(b"Toy claim", b"Toy \xff claim"),
        "bad.yaml:2:12: file is not valid UTF-8 (found byte 0xff)",
    ),
    "nul byte": (
        BASE.replace("Toy claim", "Toy\x00claim"),
        "bad.yaml:2:11: invalid YAML: special characters are not allowed (found character #x0000)",
    ),
    "deep nesting": (
        BASE + "params2: " + "[" * 5000 + "]" * 5000 + "\n",
        "bad.yaml:28:41: nesting deeper than 32 levels",
    ),
    "huge file": (
        BASE + "#" + "x" * (1024 * 1024) + "\n",
        "bad.yaml: file is larger than 1 MiB (found 1049114 bytes)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_exact_line(claims_dir, case):
    text, expected = CASES[case]
    problems = problems_of(claims_dir, "bad", text)
    assert any(p.startswith(expected) for p in problems), problems
    assert all("\n" not in p for p in problems)
    assert all("Traceback" not in p for p in problems)


def test_python_tag_is_not_executed(claims_dir, tmp_path):
    marker = tmp_path / "pwned"
    text = set_line(BASE, "title: Toy claim", f"title: !!python/object/apply:os.system ['touch {marker}']")
    problems_of(claims_dir, "bad", text)
    assert not marker.exists()


def test_all_problems_of_all_files_in_one_pass(claims_dir):
    write(claims_dir, "one", set_line(VALID.format(id="one"), "seeds: 5", "seeds: -1"))
    write(claims_dir, "two", set_line(set_line(VALID.format(id="two"), "title: Toy claim", "title: 3"),
                                      "experiment: toy-normal", "experiment: nope"))
    write(claims_dir, "good", VALID.format(id="good"))
    claims, problems = load_claims([claims_dir])
    assert [c.id for c in claims] == ["good"]
    paths = sorted({Path(p.path).name for p in problems})
    assert paths == ["one.yaml", "two.yaml"]
    assert len([p for p in problems if p.path.endswith("two.yaml")]) == 2


def test_quote_match_ignores_whitespace():
    text = "alpha beta\n  gamma   delta"
    assert find_quote(text, "beta gamma delta") == (6, len(text))
    assert find_quote(text, "beta gamma  delta\n") == (6, len(text))
    assert find_quote(text, "beta delta") is None


def test_schema_is_valid_json_schema():
    import json

    schema = json.loads(schema_json())
    assert schema["properties"]["seeds"]["maximum"] == 10000
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    import yaml

    jsonschema.validate(yaml.safe_load(VALID.format(id="x")), schema)


# ----------------------------------------------------------------- scope, tests:, beyond (issue 14)

def test_scope_tests_and_beyond_load(claims_dir):
    text = set_line(BASE, "expected: supported", "  beyond:\n    - name: other mode\n      holds: mean(x) < 5\n"
                    "    - name: with words\n      tests: beta and gamma\n      holds: mean(x) > -5\nexpected: supported")
    path = write(claims_dir, "bad", text)
    claims, problems = load_claims([path])
    assert problems == []
    claim = claims[0]
    assert claim.scope == "A toy scope."
    assert [c.tests for c in claim.conditions] == ["With fluctuating"]
    assert [(c.name, c.text, c.tests) for c in claim.beyond] == [("other mode", "mean(x) < 5", None),
                                                                  ("with words", "mean(x) > -5", "beta and gamma")]


def test_a_claim_without_scope_says_what_to_add(claims_dir):
    [problem] = problems_of(claims_dir, "bad", set_line(BASE, "scope: A toy scope.\n", ""))
    assert problem.startswith("bad.yaml:1:1: missing required key 'scope'")
    assert "add scope: one or two sentences saying what the author asserts" in problem
    assert "Migrating claim files" in problem


def test_a_headline_condition_without_tests_says_what_to_do(claims_dir):
    [problem] = problems_of(claims_dir, "bad", set_line(BASE, '      tests: "With fluctuating"\n', ""))
    assert problem.startswith("bad.yaml:15:7: missing required key 'tests' in rule.conditions[0]")
    assert "move the condition to rule.beyond" in problem


def test_tests_fragment_must_be_words_of_the_quote(claims_dir):
    [problem] = problems_of(claims_dir, "bad", set_line(BASE, 'tests: "With fluctuating"',
                                                        'tests: "With fluctuating weights"'))
    assert problem.startswith("bad.yaml:17:14: tests: must be words of the quote (found 'With fluctuating weights')")
    assert "closest passage: 'With fluctuating ‸beta" in problem
    assert "the quote has 'b' where the fragment has 'w'" in problem


def test_tests_fragment_is_matched_like_a_quote(claims_dir):
    # curly apostrophes, a typographic dash and extra whitespace all fold
    text = set_line(BASE, 'quote: "With fluctuating beta and gamma, the distribution also fluctuates."',
                    "quote: \"the mean and variance of Z[l] is determined by a complex interaction\"")
    text = set_line(text, 'tests: "With fluctuating"', 'tests: "mean  and\\u00a0variance of Z[l]"')
    path = write(claims_dir, "bad", text)
    claims, problems = load_claims([path])
    assert problems == []
    assert claims[0].conditions[0].tests == "mean and variance of Z[l]"


@pytest.mark.parametrize("where", ["conditions", "beyond"])
def test_two_identical_conditions_are_refused(claims_dir, where):
    if where == "conditions":
        extra = '    - name: again\n      tests: "beta and gamma"\n      holds: mean( x )  >  0\nexpected:'
    else:
        extra = "  beyond:\n    - name: again\n      holds: mean(x)>0\nexpected:"
    [problem] = problems_of(claims_dir, "bad", set_line(BASE, "expected:", extra))
    assert "the same condition appears twice in the rule" in problem
    assert problem.startswith("bad.yaml:")


def test_beyond_conditions_check_their_metric_names(claims_dir):
    text = set_line(BASE, "expected:", "  beyond:\n    - name: typo\n      holds: mean(xx) > 0\nexpected:")
    [problem] = problems_of(claims_dir, "bad", text)
    assert problem.startswith("bad.yaml:20:14: unknown metric for experiment 'toy-normal' (found 'xx'; did you mean 'x'?)")


def test_quote_miss_shows_the_closest_passage(claims_dir):
    text = set_line(BASE, 'quote: "With fluctuating beta and gamma, the distribution also fluctuates."',
                    'quote: "With fluctuating beta and gama, the distribution also fluctuates."')
    problems = problems_of(claims_dir, "bad", text)
    assert problems[0].startswith("bad.yaml:6:10: quote not found in thread 000_9d0fa3abc03cef76.txt")
    assert "closest passage:" in problems[0] and "beta and ga‸mma" in problems[0]
    assert "the thread has 'm' that the quote lacks" in problems[0]


def test_typographic_quotes_in_the_thread_match_straight_ones(claims_dir):
    thread = (claims_dir / "threads" / "001_e49bc9fb399b6537.txt").read_text()
    curly = next(line for line in thread.splitlines() if "\u2019" in line)
    words = curly.split()
    at = next(i for i, w in enumerate(words) if "\u2019" in w)
    fragment = " ".join(words[max(0, at - 2):at + 3])
    straight = fragment.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    assert straight != fragment
    text = set_line(BASE, "thread: 000_9d0fa3abc03cef76", "thread: 001_e49bc9fb399b6537")
    text = set_line(text, 'quote: "With fluctuating beta and gamma, the distribution also fluctuates."',
                    "quote: " + json.dumps(straight))
    text = set_line(text, 'tests: "With fluctuating"', "tests: " + json.dumps(straight))
    path = write(claims_dir, "bad", text)
    claims, problems = load_claims([path])
    assert problems == []
    start, end = claims[0].quote_span
    assert thread[start:end] == fragment


# ----------------------------------------------------------------- also: restatements of the quote

ALSO = "also:\n  - quote: \"This distribution fluctuates a lot.\"\n"  # line 1 of thread 000; BASE has 27 lines


def test_also_quotes_load_with_their_place_in_the_thread(claims_dir):
    text = BASE + ALSO + "  - thread: 000_9d0fa3abc03cef76.txt\n    quote: \"Does this mean beta and gamma\"\n"
    claims, problems = load_claims([write(claims_dir, "bad", text)])
    assert problems == []
    thread = (THREADS / "000_9d0fa3abc03cef76.txt").read_text(encoding="utf-8")
    first, second = claims[0].also
    assert thread[first.span[0]:first.span[1]] == "This distribution fluctuates a lot."
    assert (first.line, second.line) == (1, 7)
    assert claims[0].quote_spans == (claims[0].quote_span, first.span, second.span)


def test_a_claim_without_also_has_none(claims_dir):
    claims, _ = load_claims([write(claims_dir, "good", VALID.format(id="good"))])
    assert claims[0].also == ()


def test_an_also_quote_not_in_the_thread_is_one_line_with_the_closest_passage(claims_dir):
    [problem] = problems_of(claims_dir, "bad", BASE + ALSO.replace("a lot", "alot"))
    assert problem.startswith("bad.yaml:29:12: also[0].quote not found in thread 000_9d0fa3abc03cef76.txt "
                              "(found 'This distribution fluctuates alot.')")
    assert "closest passage:" in problem and "fluctuates a‸ lot" in problem


@pytest.mark.parametrize("extra, expected", [
    ("  - thread: 001_e49bc9fb399b6537\n    quote: \"Batch Normalization\"\n",
     "bad.yaml:30:13: also[1].thread must be the claim's thread '000_9d0fa3abc03cef76'"),
    ("  - quote: \"beta and gamma, the distribution\"\n",
     "bad.yaml:30:12: also[1].quote overlaps source.quote: an also-quote is another place in the thread"),
    ("  - quote: \"fluctuates a lot\"\n",
     "bad.yaml:30:12: also[1].quote overlaps also[0].quote"),
    ("  - quote: \"\"\n", "bad.yaml:30:12: also[1].quote must not be empty"),
    ("  - quot: \"x\"\n", "bad.yaml:30:5: unknown key in also[1] (found 'quot'; did you mean 'quote'?)"),
    ("  - just a string\n", "bad.yaml:30:5: also[1] must be a mapping (found 'just a string')"),
])
def test_bad_also_quotes_are_one_line_errors(claims_dir, extra, expected):
    problems = problems_of(claims_dir, "bad", BASE + ALSO + extra)
    assert any(p.startswith(expected) for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_the_schema_describes_also():
    also = json.loads(schema_json())["properties"]["also"]
    assert also["type"] == "array" and also["items"]["required"] == ["quote"]
    assert set(also["items"]["properties"]) == {"thread", "quote"}
