"""Answer files: references resolved (with "did you mean"), typed figures and changed verdicts warned
about, stale and broken evidence marked on the page, and no author text ever treated as HTML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import QUOTE, add, bnclaims, make_project

THREAD = "000_9d0fa3abc03cef76"
ANSWER = """\
thread: 000_9d0fa3abc03cef76
written_against:
  toy-a: supported
summary: >
  In short: yes [[toy-a]]. The mean is [[toy-a:x]] and its condition [[toy-a#1]].
questions:
  - quote: "how can we get a consistent distribution if beta and gamma also keep changing"
    answer: >
      Because [[toy-a]] holds. <script>alert("xss-answer")</script> and
      [click](javascript:alert(1)) and <a href="javascript:alert(2)">x</a> stay text.
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = make_project(tmp_path)
    add(project, "toy-a")
    return project


def write(project: Path, text: str) -> Path:
    path = project / "claims" / "threads" / f"{THREAD}.answer.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_answer_passes_check_without_warnings(project):
    write(project, ANSWER)
    out = bnclaims(project, "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning" not in out.stderr


@pytest.mark.parametrize("edit, message", [
    (("[[toy-a]] holds", "[[toy-b]] holds"), "unknown claim in '[[toy-b]]' (found 'toy-b'; did you mean 'toy-a'?)"),
    (("[[toy-a:x]]", "[[toy-a:xx]]"), "unknown metric of claim 'toy-a' in '[[toy-a:xx]]' (found 'xx'; did you mean 'x'?)"),
    (("[[toy-a#1]]", "[[toy-a#3]]"), "claim 'toy-a' has 1 headline condition(s) (found '[[toy-a#3]]')"),
    (("[[toy-a#1]]", "[[Toy A]]"), "a reference must be [[claim-id]]"),
    (("keep changing", "keep changin'"), "quote not found in thread 000_9d0fa3abc03cef76.txt"),
    (("  toy-a: supported\n", "  toy-a: supportd\n"), "a verdict must be one of"),
    (("written_against:\n  toy-a: supported\n", "written_against: {}\n"),
     "written_against must give the verdict of every referenced claim (missing 'toy-a')"),
])
def test_bad_references_are_one_line_errors(project, edit, message):
    path = write(project, ANSWER.replace(*edit))
    out = bnclaims(project, "check")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"claims/threads/{path.name}:")]
    assert any(message in line for line in lines), out.stderr


def test_a_typed_figure_and_a_changed_verdict_are_warnings_not_errors(project):
    text = ANSWER.replace("In short: yes", "In short: 97.5% of seeds say yes, 0.42 on average,")
    text = text.replace("  toy-a: supported\n", "  toy-a: refuted\n")
    path = write(project, text)
    out = bnclaims(project, "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"claims/threads/{path.name}:4:10: warning: a figure typed in the prose (found '97.5%')" in out.stderr
    assert ("warning: the evidence changed since this answer was written: claim 'toy-a' now expects supported "
            "(written against refuted)") in out.stderr


def test_the_answer_page_resolves_references_escapes_text_and_marks_changed_evidence(project):
    write(project, ANSWER.replace("  toy-a: supported\n", "  toy-a: refuted\n"))
    out = bnclaims(project, "build", "--out", "site", "--jobs", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    page = (project / "site" / "answers" / f"{THREAD}.html").read_text()
    assert '<a class="badge v-supported" href="../claims/toy-a.html"' in page
    assert 'class="ref-num" href="../claims/toy-a.html#m-x"' in page and "[95% CI " in page
    assert re.search(r'<a class="badge cond v-\w+" href="../claims/toy-a.html#c-1"', page)  # wraps in prose
    assert "The evidence changed since this answer was written" in page and "was refuted, now supported" in page
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert 'href="javascript:' not in page
    thread = (project / "site" / "threads" / f"{THREAD}.html").read_text()
    assert f'href="../answers/{THREAD}.html"' in thread
    assert f'href="answers/{THREAD}.html"' in (project / "site" / "index.html").read_text()


def test_a_reference_to_a_failed_claim_is_marked_and_fails_the_build(project):
    add(project, "toy-broken", experiment="toy-fault", params="{fault: raise}", expected=None)
    text = ANSWER.replace("Because [[toy-a]] holds.", "Because [[toy-broken]] fails.")
    text = text.replace("  toy-a: supported\n", "  toy-a: supported\n  toy-broken: supported\n")
    write(project, text)
    out = bnclaims(project, "build", "--out", "site", "--jobs", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{THREAD}.answer.yaml: [[toy-broken]] refers to a claim that errored" in out.stderr
    page = (project / "site" / "answers" / f"{THREAD}.html").read_text()  # the site is still written
    assert 'class="ref-broken"' in page and "Some evidence is missing" in page
    assert QUOTE  # the toy claims quote this thread
