"""Sentence maps and ``bnclaims coverage``: the splitter, map validation, the report and its exit codes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bnclaims.claims import load_claims
from bnclaims.coverage import load_maps, skeleton, split_sentences
from helpers import bnclaims, claim_text, make_project

THREAD = """\
Batch norm fixes the mean. It also fixes the variance, e.g. to one.
Does it help training? Thanks for any answer!
The layer computes $\\mu = E[x]. Then$ it divides by the std.
  1. Small batches are noisy. I think so.
"""


def test_sentences_are_split_by_the_documented_rules():
    sentences = split_sentences(THREAD)
    assert [(s.line, s.text) for s in sentences] == [
        (1, "Batch norm fixes the mean."),
        (1, "It also fixes the variance, e.g. to one."),  # no split after an abbreviation
        (2, "Does it help training?"),
        (2, "Thanks for any answer!"),
        (3, "The layer computes $\\mu = E[x]. Then$ it divides by the std."),  # never inside math
        (4, "1. Small batches are noisy."),  # a list number is no sentence end
        (4, "I think so."),
    ]
    for s in sentences:
        assert THREAD[s.start:s.end] == s.text


def test_an_abbreviation_after_an_opening_bracket_does_not_end_a_sentence():
    text = "A small batch (e.g. 32 samples) is noisy. So is (i.e. Often) this one.\n"
    assert [s.text for s in split_sentences(text)] == ["A small batch (e.g. 32 samples) is noisy.",
                                                      "So is (i.e. Often) this one."]


def test_quotations_code_and_a_lone_full_stop_are_handled():
    text = 'He said “It works. Really.” Then he left.\nCall `f(x). Now` once.\nDraw a line y\n. Next one.\n'
    assert [s.text for s in split_sentences(text)] == [
        "He said “It works. Really.” Then he left.", "Call `f(x). Now` once.", "Draw a line y", "Next one."]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = make_project(tmp_path)
    (project / "claims" / "threads" / "900_toy.txt").write_text(THREAD, encoding="utf-8")
    text = claim_text("toy-mean").replace("000_9d0fa3abc03cef76", "900_toy")
    text = text.replace("With fluctuating beta and gamma, the distribution also fluctuates.", "Batch norm fixes the mean")
    text = text.replace('tests: "With fluctuating"', 'tests: "fixes the mean"')
    (project / "claims" / "toy-mean.yaml").write_text(text, encoding="utf-8")
    return project


MAP = """\
thread: 900_toy
sentences:
  - line: 1
    text: Batch norm fixes the mean.
    claim: toy-mean
  - line: 1
    text: It also fixes the variance, e.g. to one.
    testable: the per-feature output variance over the batch is one
  - line: 2
    text: Does it help training?
    testable: BN nets reach a target accuracy in fewer steps
    question: true
  - line: 2
    text: Thanks for any answer!
    not-testable: thanks
  - line: 3
    text: The layer computes $\\mu = E[x]. Then$ it divides by the std.
    not-testable: definition-restated
  - line: 4
    text: 1. Small batches are noisy.
    testable: batch statistics at batch 2 vary more than at 32
  - line: 4
    text: I think so.
    not-testable: opinion
"""


def write_map(project: Path, text: str) -> Path:
    path = project / "claims" / "threads" / "900_toy.map.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def maps_and_problems(project: Path):
    import toy_experiments  # noqa: F401 - registers the toy experiments

    claims, problems = load_claims([project / "claims"])
    assert problems == []
    maps, problems = load_maps(project / "claims", claims)
    return maps, [str(p) for p in problems]


def test_a_complete_map_loads_and_counts(project):
    write_map(project, MAP)
    maps, problems = maps_and_problems(project)
    assert problems == []
    m = maps["900_toy.txt"]
    assert (len(m.entries), m.tested, len(m.untested), m.count("not-testable")) == (7, 1, 3, 3)
    assert m.percent == 25.0
    assert [e.sentence.line for e in m.entries if e.question] == [2]


def test_a_map_that_misses_a_sentence_names_it(project):
    write_map(project, MAP.replace("  - line: 4\n    text: I think so.\n    not-testable: opinion\n", ""))
    _, problems = maps_and_problems(project)
    assert len(problems) == 1
    assert "900_toy.map.yaml:3:3: sentence not mapped: line 4: 'I think so.'" in problems[0]


def test_a_map_naming_an_unknown_claim_says_did_you_mean(project):
    write_map(project, MAP.replace("claim: toy-mean", "claim: toy-maen"))
    _, problems = maps_and_problems(project)
    assert any(p.endswith("900_toy.map.yaml:5:12: unknown claim (found 'toy-maen'; did you mean 'toy-mean'?)")
               for p in problems), problems
    assert any("claim 'toy-mean' quotes this thread but no sentence names it" in p for p in problems)


def test_a_claim_named_on_a_sentence_its_quote_is_not_in_is_refused(project):
    text = MAP.replace("    claim: toy-mean\n", "    not-testable: vague\n")
    text = text.replace("    not-testable: opinion\n", "    claim: [toy-mean]\n")
    write_map(project, text)
    _, problems = maps_and_problems(project)
    assert any("the quote of claim 'toy-mean' does not lie in this sentence" in p for p in problems), problems


def test_an_edited_thread_shows_stale_and_unmapped_sentences(project):
    write_map(project, MAP)
    path = project / "claims" / "threads" / "900_toy.txt"
    path.write_text(THREAD.replace("I think so.", "I am sure of it."), encoding="utf-8")
    _, problems = maps_and_problems(project)
    assert any("no such sentence on line 4 of 900_toy.txt" in p for p in problems), problems
    assert any("sentence not mapped: line 4: 'I am sure of it.'" in p for p in problems), problems


@pytest.mark.parametrize("edit, message", [
    (("not-testable: thanks", "not-testable: polite"), "not-testable needs a reason, one of"),
    (("    not-testable: opinion\n", "    not-testable: opinion\n    testable: x\n"), "exactly one of claim"),
    (("question: true", "question: maybe"), "question must be true or false"),
    (("thread: 900_toy", "thread: 000_other"), "thread must name this map's thread '900_toy'"),
])
def test_malformed_entries_are_one_line_errors(project, edit, message):
    write_map(project, MAP.replace(*edit))
    _, problems = maps_and_problems(project)
    assert any(message in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_the_skeleton_lists_every_sentence_and_fills_in_claims(project):
    import toy_experiments  # noqa: F401

    claims, _ = load_claims([project / "claims"])
    text = skeleton("900_toy.txt", THREAD, claims)
    assert text.count("  - line:") == 7
    assert "    claim: [toy-mean]" in text
    assert "    question: true" in text
    write_map(project, text)
    _, problems = maps_and_problems(project)  # unclassified sentences fail until someone classifies them
    assert sum("exactly one of claim, testable, not-testable (found none)" in p for p in problems) == 6


def test_coverage_command_table_untested_list_json_and_fail_under(project):
    write_map(project, MAP)
    out = bnclaims(project, "coverage", "--json", "cov.json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "900_toy" in out.stdout and "25%" in out.stdout
    assert "900_toy:1: It also fixes the variance, e.g. to one." in out.stdout
    data = json.loads((project / "cov.json").read_text())
    (thread,) = data["threads"]
    assert (thread["sentences"], thread["testable"], thread["tested"], thread["percent"]) == (7, 4, 1, 25.0)
    assert bnclaims(project, "coverage", "--fail-under", "25").returncode == 0
    below = bnclaims(project, "coverage", "--fail-under", "25.1")
    assert below.returncode == 1 and "below --fail-under" in below.stdout


def test_an_invalid_map_fails_check_and_coverage_with_exit_2(project):
    write_map(project, MAP.replace("claim: toy-mean", "claim: nobody"))
    for command in ("check", "coverage"):
        out = bnclaims(project, command)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "900_toy.map.yaml:5:12: unknown claim (found 'nobody')" in out.stdout + out.stderr


def test_thread_page_marks_untested_sentences_with_a_label_and_lists_them(project):
    write_map(project, MAP)
    out = bnclaims(project, "build", "--out", "site", "--jobs", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    html = (project / "site" / "threads" / "900_toy.html").read_text()
    assert html.count('class="untested"') == 3
    assert html.count('<span class="badge untested-label"') >= 3  # a text label, not colour alone
    assert "Coverage: 1 of 4 testable sentences tested (25%)" in html
    assert "the per-feature output variance over the batch is one" in html
    index = (project / "site" / "index.html").read_text()
    assert 'id="coverage"' in index and "25%" in index


# ----------------------------------------------------------------- also: restatements credited to a claim

ALSO_MAP = MAP.replace("    testable: the per-feature output variance over the batch is one\n", "    claim: toy-mean\n")


def add_also(project: Path, quote: str = "It also fixes the variance") -> None:
    path = project / "claims" / "toy-mean.yaml"
    path.write_text(path.read_text(encoding="utf-8") + f'also:\n  - quote: "{quote}"\n', encoding="utf-8")


def test_a_sentence_holding_an_also_quote_may_name_the_claim_and_counts_as_tested(project):
    add_also(project)
    write_map(project, ALSO_MAP)
    maps, problems = maps_and_problems(project)
    assert problems == []
    m = maps["900_toy.txt"]
    assert (m.tested, len(m.untested), m.percent) == (2, 2, 50.0)
    assert [e.claims for e in m.entries if e.kind == "claim"] == [("toy-mean",), ("toy-mean",)]


def test_without_the_also_quote_the_claim_may_not_be_named_there(project):
    write_map(project, ALSO_MAP)
    _, problems = maps_and_problems(project)
    assert any(p.endswith("900_toy.map.yaml:8:12: the quote of claim 'toy-mean' does not lie in this sentence")
               for p in problems), problems


def test_an_unmapped_also_quote_is_a_check_error_at_its_sentence(project):
    add_also(project)
    write_map(project, MAP)  # the also-quote's sentence is still classed testable
    _, problems = maps_and_problems(project)
    assert [p.split("900_toy.map.yaml")[1] for p in problems] == [
        ":6:5: claim 'toy-mean' has an also-quote in this sentence, which does not name it (found testable)"]
    out = bnclaims(project, "check")
    assert out.returncode == 2 and "has an also-quote in this sentence" in out.stdout + out.stderr


def test_the_main_quote_must_stay_mapped_when_an_also_quote_is(project):
    add_also(project)
    write_map(project, ALSO_MAP.replace("    claim: toy-mean\n", "    not-testable: vague\n", 1))
    _, problems = maps_and_problems(project)
    assert [p.split("900_toy.map.yaml")[1] for p in problems] == [
        ":3:5: claim 'toy-mean' has its quote in this sentence, which does not name it (found not-testable: vague)"]


def test_the_skeleton_names_claims_on_their_also_quotes_too(project):
    import toy_experiments  # noqa: F401

    add_also(project)
    claims, _ = load_claims([project / "claims"])
    assert skeleton("900_toy.txt", THREAD, claims).count("    claim: [toy-mean]") == 2


def test_pages_and_json_show_also_quotes(project):
    add_also(project)
    write_map(project, ALSO_MAP)
    out = bnclaims(project, "build", "--out", "site", "--jobs", "1", "--json", "run.json")
    assert out.returncode == 0, out.stdout + out.stderr
    thread = (project / "site" / "threads" / "900_toy.html").read_text()
    # the restatement is marked with the claim's verdict and links to the claim
    assert ('<mark class="q v-supported also" id="q-toy-mean--also-1" title="Says the same as the claim: '
            'Toy claim toy-mean — Right (supported)">It also fixes the variance</mark><a class="badge v-supported" '
            'href="../claims/toy-mean.html"') in thread
    assert 'said again on <a href="#q-toy-mean--also-1">line 1</a>' in thread
    assert "Coverage: 2 of 4 testable sentences tested (50%)" in thread
    claim = (project / "site" / "claims" / "toy-mean.html").read_text()
    assert '<h2 id="also-h">Also said in the thread</h2>' in claim
    assert ('<blockquote cite="../threads/900_toy.html#q-toy-mean--also-1"><p>It also fixes the variance</p>'
            '</blockquote>') in claim
    assert '<a href="../threads/900_toy.html#q-toy-mean--also-1">line 1 — read it in context</a>' in claim
    (result,) = json.loads((project / "run.json").read_text())["claims"]
    assert result["also"] == [{"quote": "It also fixes the variance", "line": 1}]


def test_a_claim_without_also_quotes_has_no_also_section(project):
    write_map(project, MAP)
    assert bnclaims(project, "build", "--out", "site", "--jobs", "1").returncode == 0
    assert "Also said in the thread" not in (project / "site" / "claims" / "toy-mean.html").read_text()
    assert "said again on" not in (project / "site" / "threads" / "900_toy.html").read_text()
