"""Limits and exit codes (issue 17, items 16-19): out-of-range options are usage errors, a selection
that matches nothing exits 5, a closed stdout keeps the failing exit code, caps with clear errors,
and a wrongly defined experiment is a one-line user error naming its function."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import toy_experiments  # noqa: F401 - registers toy-normal
from bnclaims import experiments
from bnclaims.claims import load_claims
from bnclaims.cli import keyword_matcher, main
from bnclaims.errors import ExperimentDefinitionError, ExperimentError, UserError
from helpers import add, bnclaims, claim_text, env_for_toys, make_project



@pytest.fixture
def project(tmp_path):
    project = make_project(tmp_path / "project")
    add(project, "toy-a", seeds=3)
    return project


# --------------------------------------------------------------------------- 16: option ranges

@pytest.mark.parametrize("args", [
    ("--seeds", "10001"), ("--seeds", "99999999"), ("--jobs", "0"), ("--jobs", "-1"), ("--jobs", "10000"),
    ("--executor", "dask", "--jobs", "257"), ("--memory-limit", "0"), ("--memory-limit", "99999999999"),
], ids=lambda a: " ".join(a))
def test_out_of_range_options_are_usage_errors_before_anything_runs(project, monkeypatch, capsys, args):
    monkeypatch.chdir(project)
    try:
        code = main(["run", "--cache-dir", "cache", *args])
    except SystemExit as e:  # argparse's own one-line error
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (project / "cache").exists()


def test_jobs_up_to_four_times_the_cores_is_fine(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert main(["run", "--cache-dir", "cache", "--jobs", "4", "-k", "nothing"]) == 5
    assert main(["run", "--cache-dir", "cache", "--jobs", "5", "-k", "nothing"]) == 2


# --------------------------------------------------------------------------- 17: exit 5, closed stdout

def test_a_selection_that_matches_nothing_exits_5(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(["run", "--cache-dir", "cache", "-k", "nothing"]) == 5
    assert "no claim matches -k 'nothing'" in capsys.readouterr().err
    assert main(["build", "--cache-dir", "cache", "--tag", "nope", "--out", "site"]) == 5
    assert main(["list", "--cache-dir", "cache", "--tag", "nope"]) == 5
    assert not (project / "site").exists()
    (project / "claims" / "broken.yaml").write_text("id: broken\n")
    assert main(["run", "--cache-dir", "cache", "-k", "nothing"]) == 2  # an invalid claim file wins


def test_a_failing_run_keeps_its_exit_code_when_stdout_is_closed_early(project):
    add(project, "toy-b", seeds=3, params="{mu: -3.0}", expected="supported")  # refuted: exit 1
    process = subprocess.Popen([sys.executable, "-m", "bnclaims", "run", "--jobs", "1", "--cache-dir", "cache"],
                               cwd=project, env=env_for_toys(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head -0` does
    err = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


# --------------------------------------------------------------------------- 18: caps

def test_k_nested_deeper_than_100_is_a_usage_error():
    for expr in ("(" * 150 + "a" + ")" * 150, "not " * 500 + "a"):
        with pytest.raises(UserError, match="nested deeper than 100"):
            keyword_matcher(expr)
    assert keyword_matcher("(" * 99 + "gamma" + ")" * 99)("bn-gamma")
    long_chain = keyword_matcher(" or ".join(["nothing"] * 900 + ["gamma"]))  # long, not deep: fine
    assert long_chain("bn-gamma") and not long_chain("bn-beta")
    assert keyword_matcher("gamma and not (beta or lr)")("gamma-x") is True


def test_k_too_deep_from_the_command_line_is_one_line(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(["run", "--cache-dir", "cache", "-k", "(" * 2000 + "a" + ")" * 2000]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "nested deeper than 100" in err


def test_a_series_longer_than_a_million_points_is_an_error_with_the_reason():
    @experiments.experiment("limits-long-series", metrics={"x": "1"}, series={"curve": "too long"})
    def long_series(rng: np.random.Generator) -> dict:
        return {"x": 1.0, "curve": np.zeros(1_000_001)}

    try:
        with pytest.raises(ExperimentError, match="1000001 points"):
            experiments.run_experiment(experiments.get("limits-long-series"), 0, {})
    finally:
        experiments._REGISTRY.pop("limits-long-series")


def test_a_thread_file_over_1_mib_is_refused(project):
    threads = project / "claims" / "threads"
    quote = "With fluctuating beta and gamma, the distribution also fluctuates."
    (threads / "huge.txt").write_text(quote + "\n" + "x" * (1 << 20))
    path = project / "claims" / "toy-huge.yaml"
    path.write_text(claim_text("toy-huge").replace("thread: 000_9d0fa3abc03cef76", "thread: huge"))
    claims, problems = load_claims([path])
    assert claims == [] and any("larger than 1 MiB" in p.message for p in problems), problems


# --------------------------------------------------------------------------- 19: wrong definitions

BAD_MODULE = '''
import numpy as np
from bnclaims.experiments import experiment


@experiment("limits-no-annotation", metrics={"x": "1"})
def no_annotation(rng: np.random.Generator, *, lr=0.1) -> dict:
    return {"x": 1.0}
'''


def test_a_wrongly_defined_experiment_is_one_line_naming_the_function(project):
    (project.parent / "limits_bad.py").write_text(BAD_MODULE)
    env = env_for_toys("toy_experiments,limits_bad")
    env["PYTHONPATH"] = os.pathsep.join([str(project.parent), env["PYTHONPATH"]])
    for command in ("check", "run"):
        result = subprocess.run([sys.executable, "-m", "bnclaims", command], cwd=project, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "internal error" not in lines[0], lines
        assert "function 'no_annotation'" in lines[0] and "'lr'" in lines[0] and "no type annotation" in lines[0]


@pytest.mark.parametrize("source", [
    "def f(rng, *, lr=0.1): ...",
    "def f(rng, lr: float = 0.1): ...",
    "def f(rng, *, lr: float): ...",
    "def f(rng, *, lr: dict = {}): ...",
    "def f(x, *, lr: float = 0.1): ...",
])
def test_every_definition_error_is_a_user_error_and_still_a_type_error(source):
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - test code defining a function
    with pytest.raises(ExperimentDefinitionError, match="function 'f'") as info:
        experiments.experiment("limits-def", metrics={"x": "1"})(namespace["f"])
    assert isinstance(info.value, TypeError) and isinstance(info.value, UserError)
    assert "limits-def" not in experiments._REGISTRY


def test_the_pytest_options_have_the_same_limits(pytester):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    for option in ("--bnclaims-seeds=10001", f"--bnclaims-jobs={4 * (os.cpu_count() or 1) + 1}"):
        result = pytester.runpytest_subprocess(option)
        assert result.ret == 4, result.stderr.str()  # pytest's usage error
        assert "must be at most" in result.stderr.str()


def test_fuzzed_k_expressions_compile_or_give_a_usage_error():
    import random

    rng = random.Random(17)
    vocabulary = ["gamma", "beta", "and", "or", "not", "(", ")", "bn", "lr"]
    for _ in range(2000):
        expr = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 400)))
        if rng.random() < 0.1:
            expr = "(" * rng.randint(90, 300) + expr
        try:
            predicate = keyword_matcher(expr)
        except UserError:
            continue
        assert predicate("bn-gamma-lr") in (True, False)
