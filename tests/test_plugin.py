"""The pytest plugin, run for real: claim files in a temp project, pytest in a subprocess.

The subprocess loads the plugin through its ``pytest11`` entry point (as a user's pytest
does) and imports the toy experiments from tests/fixtures via PYTHONPATH.
"""

from __future__ import annotations

import importlib.metadata
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"

THREAD = """\
alice: Batch norm makes the mean of every feature zero over the batch.
bob: Only before gamma and beta, surely.
"""

# `id:` is on line 2, so reportinfo/file lines are checked against a line that is not 1.
CLAIM = """\
# a toy claim for the plugin tests
id: {id}
title: Toy claim {id}
claim: x is positive on average
source:
  thread: demo
  quote: "Batch norm makes the mean of every feature zero over the batch."
tags: [{tags}]
experiment: {experiment}
params:
  {param}
seeds: 4
rule:
  conditions:
    - name: positive
      holds: mean(x) > 0
      tests: "Batch norm"
{expected}explanation: A toy.
scope: A toy scope.
"""


def claim_text(claim_id: str, *, expected: str | None = "supported", tags: str = "toy, fast",
               experiment: str = "toy-normal", param: str = "mu: 5.0") -> str:
    return CLAIM.format(id=claim_id, tags=tags, experiment=experiment, param=param,
                        expected=f"expected: {expected}\n" if expected else "")


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> pytest.Pytester:
    """A temp project with claims/threads/demo.txt; pytest runs in it with the toy experiments importable."""
    pytester.makeini("[pytest]\n")  # the temp dir is the rootdir (site/ paths are relative to it)
    (pytester.path / "claims" / "threads").mkdir(parents=True)
    (pytester.path / "claims" / "threads" / "demo.txt").write_text(THREAD, encoding="utf-8")
    path = os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.delenv("BNCLAIMS_EXPERIMENTS", raising=False)
    pytester.cache_dir = tmp_path_factory.mktemp("bnclaims-cache")  # not shared between tests
    return pytester


def add_claim(project: pytest.Pytester, claim_id: str, **kwargs) -> Path:
    path = project.path / "claims" / f"{claim_id}.yaml"
    path.write_text(claim_text(claim_id, **kwargs), encoding="utf-8")
    return path


def run(project: pytest.Pytester, *args: str, experiments: bool = True) -> pytest.RunResult:
    options = [f"--bnclaims-cache-dir={project.cache_dir}"]
    if experiments:
        options += ["--bnclaims-experiments", "toy_experiments"]
    return project.runpytest_subprocess(*options, *args)


def test_entry_point_is_registered():
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert "bnclaims.plugin" in {ep.value for ep in plugins}


def test_collects_each_claim_file_as_one_item_named_by_id(project):
    add_claim(project, "alpha-claim")
    add_claim(project, "beta-claim")
    # YAML that is not a claim file: a CI config, a root config, and a file among the threads
    (project.path / ".github" / "workflows").mkdir(parents=True)
    (project.path / ".github" / "workflows" / "ci.yml").write_text("on: push\njobs: {}\n")
    (project.path / "config.yaml").write_text("a: 1\n")
    (project.path / "claims" / "threads" / "notes.yaml").write_text("b: 2\n")
    result = run(project, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["claims/alpha-claim.yaml::alpha-claim", "claims/beta-claim.yaml::beta-claim",
                                 "2 tests collected*"])
    assert "ci.yml" not in result.stdout.str() and "config.yaml" not in result.stdout.str()
    assert result.ret == 0


def test_reportinfo_gives_file_and_line_of_id(project):
    add_claim(project, "alpha-claim")
    # in-process, so the item itself can be inspected (the plugin loads via its entry point here too)
    import toy_experiments  # noqa: F401 - registers the toy experiments in this process

    items, _ = project.inline_genitems("claims")
    (item,) = items
    assert item.name == "alpha-claim"
    path, line, label = item.reportinfo()
    assert Path(path) == project.path / "claims" / "alpha-claim.yaml"
    assert line == 1  # 0-based: `id:` is on line 2
    assert label == "claim alpha-claim"
    assert set(item.keywords).issuperset({"toy", "fast"})


def test_passing_claim(project):
    add_claim(project, "good-claim")
    add_claim(project, "no-expected", expected=None, param="mu: -5.0")  # refuted, but nothing declared
    result = run(project, "-v", "claims/")
    result.stdout.fnmatch_lines(["claims/good-claim.yaml::good-claim PASSED (supported)*",
                                 "claims/no-expected.yaml::no-expected PASSED (refuted)*"])
    result.assert_outcomes(passed=2)


def test_verdict_mismatch_is_a_readable_report(project):
    add_claim(project, "wrong-claim", expected="refuted")
    result = run(project)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "claim wrong-claim: got supported, expected refuted",
        "  title:    Toy claim wrong-claim",
        "  expected: refuted",
        "  got:      supported",
        "  reason:   mean(x) = *95% CI*",
        "  conditions (4 seeds, 95% CI each, 95% family-wise):",
        "    supported    positive  mean(x) > 0: estimate *, CI [[]*, *[]]*",
        "  runs:     seeds 0..3 (4 seeds, * cached) of experiment toy-normal",
        "  file:     claims/wrong-claim.yaml:2",
        "  page:     site/claims/wrong-claim.html*",
    ])
    assert "Traceback" not in result.stdout.str()
    assert "plugin.py" not in result.stdout.str()


def test_experiment_error_is_a_failure_with_its_message(project):
    add_claim(project, "broken-claim", experiment="toy-fault", param="fault: raise")
    result = run(project)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "claim broken-claim: got error, expected supported",
        "  got:      error",
        "  error:    seed 0: RuntimeError: boom from the experiment*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_invalid_file_is_a_one_line_collection_error_and_the_rest_still_run(project):
    add_claim(project, "good-claim")
    bad = claim_text("bad-claim").replace("seeds: 4", "seeds: 0")
    (project.path / "claims" / "bad-claim.yaml").write_text(bad, encoding="utf-8")
    result = run(project)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR collecting claims/bad-claim.yaml*",
        "claims/bad-claim.yaml:12:8: seeds must be an integer in 1..10000 (found int 0)",
    ])
    assert "Traceback" not in result.stdout.str()
    assert "Interrupted" not in result.stdout.str()
    assert result.ret == 2  # as `bnclaims check/run/build` exit for an invalid claim file


def test_a_python_collection_error_still_interrupts(project):
    add_claim(project, "good-claim")
    project.makepyfile(test_broken="import no_such_module_anywhere\n")
    result = run(project)
    result.stdout.fnmatch_lines(["*Interrupted: 1 error during collection*"])
    result.assert_outcomes(errors=1)


def test_tags_are_markers_registered_for_strict_markers(project):
    add_claim(project, "fast-claim", tags="exact, fast")
    add_claim(project, "slow-claim", tags="exact, slow")
    result = run(project, "--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning",
                 "-m", "exact and not slow")
    result.assert_outcomes(passed=1, deselected=1, warnings=0)
    assert "PytestUnknownMarkWarning" not in result.stdout.str()
    result = run(project, "--strict-markers", "-v", "-m", "slow")
    result.stdout.fnmatch_lines(["*::slow-claim PASSED*"])
    result.assert_outcomes(passed=1, deselected=1, warnings=0)


def test_k_selects_by_id(project):
    add_claim(project, "gamma-claim")
    add_claim(project, "delta-claim", expected="refuted")  # would fail if selected
    result = run(project, "-v", "-k", "gamma")
    result.stdout.fnmatch_lines(["*::gamma-claim PASSED*"])
    result.assert_outcomes(passed=1, deselected=1)


def test_all_selected_claims_run_in_one_pass_through_the_cache(project):
    for name in ("one-claim", "two-claim", "three-claim"):
        add_claim(project, name)
    first = run(project)
    first.assert_outcomes(passed=3)
    first.stdout.fnmatch_lines(["bnclaims: 3 claims, 12 seed runs (0 from cache) in *"])
    again = run(project)
    again.stdout.fnmatch_lines(["bnclaims: 3 claims, 12 seed runs (12 from cache) in *"])
    fresh = run(project, "--bnclaims-no-cache", "--bnclaims-jobs", "1")
    fresh.stdout.fnmatch_lines(["bnclaims: 3 claims, 12 seed runs (0 from cache) in *"])


def test_seed_options_reach_the_runner(project):
    add_claim(project, "seeded-claim", expected="refuted")  # fails, so the report shows the seeds
    result = run(project, "--bnclaims-seeds", "3", "--bnclaims-seed-base", "100")
    result.stdout.fnmatch_lines(["  runs:     seeds 100..102 (3 seeds, 0 cached) of experiment toy-normal"])
    result = run(project, "--bnclaims-seeds", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--bnclaims-seeds: must be at least 1 (found 0)*"])


def test_experiments_from_the_environment_and_bad_module(project, monkeypatch):
    add_claim(project, "env-claim")
    monkeypatch.setenv("BNCLAIMS_EXPERIMENTS", "toy_experiments")
    run(project, experiments=False).assert_outcomes(passed=1)
    monkeypatch.setenv("BNCLAIMS_EXPERIMENTS", "no_such_experiments")
    result = run(project, experiments=False)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bnclaims: cannot import experiments module 'no_such_experiments'*"])


def test_xdist(project):
    pytest.importorskip("xdist")
    add_claim(project, "good-claim")
    add_claim(project, "other-claim")
    add_claim(project, "wrong-claim", expected="refuted")
    result = run(project, "-n", "2")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["claim wrong-claim: got supported, expected refuted"])
    assert "Traceback" not in result.stdout.str()


def test_without_cacheprovider(project):
    add_claim(project, "good-claim")
    result = run(project, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (project.path / ".pytest_cache").exists()


def test_junitxml_names_claims_by_id(project):
    add_claim(project, "good-claim")
    add_claim(project, "wrong-claim", expected="refuted")
    result = run(project, "--junitxml", "report.xml")
    result.assert_outcomes(passed=1, failed=1)
    cases = ET.parse(project.path / "report.xml").getroot().iter("testcase")
    by_name = {case.get("name"): case for case in cases}
    assert set(by_name) == {"good-claim", "wrong-claim"}
    failure = by_name["wrong-claim"].find("failure")
    assert failure is not None and "expected refuted" in failure.get("message")
    properties = {p.get("name"): p.get("value") for p in by_name["good-claim"].iter("property")}
    assert properties == {"bnclaims_verdict": "supported"}
