"""Claim-file loading: every class of bad input gets one exact line with file:line:col."""

from __future__ import annotations

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
expected: supported
explanation: A toy.
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
        "bad.yaml:8:11: invalid YAML: expected ',' or ']', but got ':'",
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
        "bad.yaml:26:1: duplicate key 'seeds' (first defined on line 12)",
    ),
    "missing key": (
        set_line(BASE, "explanation: A toy.\n", ""),
        "bad.yaml:1:1: missing required key 'explanation'",
    ),
    "bad expected": (
        set_line(BASE, "expected: supported", "expected: suported"),
        "bad.yaml:17:11: expected must be one of supported, refuted, mixed, inconclusive "
        "(found 'suported'; did you mean 'supported'?)",
    ),
    "alias": (
        set_line(BASE, "tags: [toy, fast]", "tags: &t [toy, fast]\nexplanation2: *t"),
        "bad.yaml:8:15: YAML aliases are not allowed in claim files",
    ),
    "plot series": (
        set_line(BASE, "    y: [curve]", "    y: [curv]"),
        "bad.yaml:25:8: plot y must name a series of experiment 'toy-normal' (found 'curv'; "
        "did you mean 'curve'?); series: curve, steps",
    ),
    "reference without link": (
        set_line(BASE, '    arxiv: "1502.03167"', "    note: no link"),
        "bad.yaml:20:5: reference needs one of arxiv, doi or url (found only title, note)",
    ),
    "bad arxiv id": (
        set_line(BASE, '    arxiv: "1502.03167"', '    arxiv: "javascript:alert(1)"'),
        "bad.yaml:21:12: references[0].arxiv must match",
    ),
    "not a mapping": (
        "- just\n- a list\n",
        "bad.yaml:1:1: a claim file must be a YAML mapping (found a list)",
    ),
    "two documents": (
        BASE + "---\nid: again\n",
        "bad.yaml:26:1: invalid YAML: more than one YAML document (expected exactly one)",
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
        "bad.yaml:26:41: nesting deeper than 32 levels",
    ),
    "huge file": (
        BASE + "#" + "x" * (1024 * 1024) + "\n",
        "bad.yaml: file is larger than 1 MiB (found 1049062 bytes)",
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
