"""Property-based fuzzing of the claim loader: random mutations of a valid claim file (bytes, lines,
tokens) never make ``load_claims`` raise; it returns either the claim or problems, each one
printable line that starts with the file's path.

Derandomized (a fixed sequence of examples) so CI sees the same cases on every run.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import toy_experiments  # noqa: F401 - registers toy-normal and toy-fault
from bnclaims.claims import display_path, load_claims

VALID = """\
id: fuzz-claim
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
  mode: plain
seeds: 5
timeout: 30
rule:
  conditions:
    - name: positive
      holds: mean(x) > 0
      tests: "With fluctuating"
    - name: ordered
      holds: mean(x - y) between -10 and 10
      tests: "beta and gamma, the distribution"
  beyond:
    - name: ratio
      holds: geomean(x / y) > 0.5
    - name: spread
      tests: "also fluctuates"
      holds: max(x) < 100
expected: supported
scope: A toy scope.
explanation: >
  A toy.
references:
  - title: Ioffe and Szegedy 2015
    arxiv: "1502.03167"
    note: the paper
plots:
  - title: curve
    x: steps
    y: [curve]
    labels: [the curve]
    kind: line
"""

# what a hostile or careless author might type where a token was
HOSTILE_TOKENS = [
    "", " ", "\t", "\n", ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "'", '"', "#", "&a", "*a", "&a [1]", "!!python/object/apply:os.system",
    "!!binary", "!foo", "<<", "? ", "|", ">", "---", "...", "%YAML 1.1", "~", "null", "yes", "no", "true", ".nan",
    ".inf", "-.inf", "1e400", "1.0e+400", "0x1F", "0o17", "1_000", "1:20", "2001-12-14", "99999999999999999999",
    "-1", "0", "3.5", '"\\x00"', '"\\e[2J"', '"\\r"', '"a\\nb"', '"\\u2028"', '"\\ud800"', "\x00", "\xff", "\u2028",
    "\ufeff", "\x1b", "../../etc/passwd", "/etc/passwd", "<script>", "mean(", "mean(x) >", "between", "geomean(x - y) > 0",
    "toy-fault", "toy-normall", "mu", "muu", "seeds", "sedes", "x" * 300, "[" * 40, "{a: " * 40,
]


def mutate_bytes(text: str, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(text.encode("utf-8"))
    for kind, position, value in edits:
        at = position % (len(data) + 1)
        if kind == 0:
            data[at:at + 1] = bytes([value])  # replace
        elif kind == 1:
            data[at:at] = bytes([value])  # insert
        else:
            del data[at:at + 1 + value % 8]  # delete a few
    return bytes(data)


def mutate_lines(text: str, edits: list[tuple[int, int, int]]) -> str:
    lines = text.splitlines(keepends=True)
    for kind, a, b in edits:
        if not lines:
            break
        i, j = a % len(lines), b % len(lines)
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(j, lines[i])  # duplicate (duplicate keys, repeated items)
        elif kind == 2:
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == 3:
            lines[i] = " " * (b % 5) + lines[i].lstrip(" ")  # re-indent
        else:
            lines[i] = lines[i][: b % (len(lines[i]) + 1)] + "\n"  # cut the line short
    return "".join(lines)


TOKEN = re.compile(r"[A-Za-z0-9_.]+|\s+|.", re.DOTALL)


def mutate_tokens(text: str, edits: list[tuple[int, str]]) -> str:
    tokens = TOKEN.findall(text)
    for position, replacement in edits:
        tokens[position % len(tokens)] = replacement
    return "".join(tokens)


byte_edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)
line_edits = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 200), st.integers(0, 200)), min_size=1, max_size=5)
token_edits = st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(HOSTILE_TOKENS) | st.text(max_size=6)),
                       min_size=1, max_size=5)

# BNCLAIMS_FUZZ_EXAMPLES=5000 fuzzes deeper, with fresh random examples each time (not in CI)
DEEP = int(os.environ.get("BNCLAIMS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP or 250, derandomize=not DEEP, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def claims_dir(tmp_path_factory) -> Path:
    from helpers import make_project

    return make_project(tmp_path_factory.mktemp("fuzz")) / "claims"


def printable(text: str) -> bool:
    """One line a terminal shows as it is: no line breaks, no escape sequences, no other controls."""
    return not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def check_outcome(claims_dir: Path, data: bytes) -> None:
    path = claims_dir / "fuzz-claim.yaml"
    path.write_bytes(data)
    claims, problems = load_claims([path])  # must never raise
    if claims:
        assert len(claims) == 1 and problems == [], problems
        return
    assert problems, "neither a claim nor a problem"
    shown = display_path(path)
    for problem in problems:
        line = str(problem)
        assert line.startswith(shown + ":"), line
        assert printable(line), repr(line)
        assert problem.message.strip(), line
        assert problem.line is None or (isinstance(problem.line, int) and problem.line >= 1), line
        assert problem.column is None or (isinstance(problem.column, int) and problem.column >= 1), line
        assert "Traceback" not in line and len(line) < 2000, line[:300]


def test_the_unmutated_file_is_valid(claims_dir):
    (claims_dir / "fuzz-claim.yaml").write_text(VALID, encoding="utf-8")
    claims, problems = load_claims([claims_dir / "fuzz-claim.yaml"])
    assert problems == [] and len(claims) == 1


@FUZZ
@given(edits=byte_edits)
def test_byte_mutations_never_crash(claims_dir, edits):
    check_outcome(claims_dir, mutate_bytes(VALID, edits))


@FUZZ
@given(edits=line_edits)
def test_line_mutations_never_crash(claims_dir, edits):
    check_outcome(claims_dir, mutate_lines(VALID, edits).encode("utf-8"))


@FUZZ
@given(edits=token_edits)
def test_token_mutations_never_crash(claims_dir, edits):
    check_outcome(claims_dir, mutate_tokens(VALID, edits).encode("utf-8", errors="surrogatepass"))
