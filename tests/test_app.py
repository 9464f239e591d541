"""The application layer (bnclaims.app) under the CLI and the plugin: one precedence for settings, the same
RunOptions for a claim under ``bnclaims run`` and under pytest, and one failure text for both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import toy_experiments  # noqa: F401 - imported before pytester snapshots sys.modules (it registers once)
from bnclaims import app, config
from bnclaims.cli import main
from bnclaims.errors import BnclaimsError, UserError
from helpers import add, bnclaims, env_for_toys, make_project


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("BNCLAIMS_EXPERIMENTS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_project puts the table's paths on it


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- settings

TABLE = """\
[tool.bnclaims]
claims = "from_table_claims"
experiments = ["from_table"]
cache-dir = "from_table_cache"
jobs = 3

[tool.pytest.ini_options]
bnclaims_experiments = ["from_ini"]
"""


def test_settings_first_match_wins_command_line_environment_table_ini(tmp_path, monkeypatch, clean_env):
    write(tmp_path / "pyproject.toml", TABLE)
    monkeypatch.chdir(tmp_path)
    project = app.load_project()
    assert str(tmp_path) in sys.path  # the table's paths (default ".") before any experiments module is imported

    table = app.settings(project)
    assert (table.claims, table.cache_dir, table.jobs, table.modules) == \
        (Path("from_table_claims"), tmp_path / "from_table_cache", 3, ("from_table",))
    assert table.jobs_source == "pyproject.toml [tool.bnclaims] jobs" and not table.jobs_given
    assert table.modules_source == "pyproject.toml [tool.bnclaims] experiments"

    monkeypatch.setenv("BNCLAIMS_EXPERIMENTS", "from_env")
    assert app.settings(project).modules == ("from_env",)  # the environment beats the table

    given = app.settings(project, claims=Path("c"), cache_dir=Path("d"), jobs=2, jobs_flag="--bnclaims-jobs",
                         experiments=["from_cli"])
    assert (given.claims, given.cache_dir, given.jobs, given.modules) == (Path("c"), Path("d"), 2, ("from_cli",))
    assert (given.jobs_source, given.jobs_given, given.modules_source) == ("--bnclaims-jobs", True, "command line")

    monkeypatch.delenv("BNCLAIMS_EXPERIMENTS")
    write(tmp_path / "pyproject.toml", "[tool.pytest.ini_options]\nbnclaims_experiments = ['from_ini']\n")
    bare = app.settings(config.load())
    assert (bare.claims, bare.cache_dir, bare.jobs, bare.modules) == (Path("claims"), None, None, ("from_ini",))
    assert app.settings(config.load(), ini_experiments=["plugin_ini"]).modules == ("plugin_ini",)  # pytest's getini


def test_jobs_default_is_shared_among_xdist_workers_unless_given(tmp_path, clean_env):
    project = config.ProjectConfig(file=tmp_path / "pyproject.toml", jobs=8)
    assert app.run_options(app.settings(project), sharing=3).jobs == 2  # the table's 8 among 3 workers
    assert app.run_options(app.settings(project, jobs=5), sharing=3).jobs == 5  # the command line's, as given
    assert app.run_options(app.settings(project)).jobs == 8
    assert app.run_options(app.settings(config.ProjectConfig())).jobs == 0  # every core


def test_option_values_have_one_set_of_bounds(clean_env):
    import argparse

    assert (app.seed_count("10000"), app.seed_base("0"), app.seconds("0.5"), app.memory_limit_mib("1")) == \
        (10_000, 0, 0.5, 1)
    for parse, text, message in [(app.seed_count, "0", "must be at least 1 (found 0)"),
                                 (app.seed_count, "10001", "must be at most 10000, as in claim files (found 10001)"),
                                 (app.seed_base, "-1", "must be 0 or more (found -1)"),
                                 (app.seconds, "0", "must be positive (found 0)"),
                                 (app.memory_limit_mib, "0", "must be 1..1048576 MiB (found 0)"),
                                 (app.jobs, "0", "must be at least 1 (found 0)")]:
        with pytest.raises(argparse.ArgumentTypeError, match=rf"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
            parse(text)
    with pytest.raises(UserError, match=r"^pyproject.toml \[tool.bnclaims\] jobs must be 1\.\.\d+ on this machine"):
        app.check_jobs(10**6, "pyproject.toml [tool.bnclaims] jobs")
    app.check_jobs(256, "--jobs", dask=True)


def test_a_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, clean_env):
    write(tmp_path / "broken_experiments_mod.py", "raise ValueError('bad\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"^cannot import experiments module 'broken_experiments_mod' "
                                        r"\(ValueError: bad\)$"):
        app.import_experiments(("broken_experiments_mod",), builtin=False)
    with pytest.raises(UserError, match=r"^cannot import experiments module 'no_such_mod_here' \(No module named"):
        app.import_experiments(("no_such_mod_here",))


# --------------------------------------------------------------------------- the same RunOptions

class Captured(BnclaimsError):
    """Raised by the stand-in for run_claims once it has seen the options (nothing runs)."""


@pytest.fixture
def capture_options(monkeypatch):
    """Replace ``bnclaims.runner.run_claims`` (looked up at call time by the CLI and the plugin) by one that
    records the RunOptions it is given."""
    import bnclaims.runner

    seen = []

    def record(claims, options, **kwargs):
        seen.append(options)
        raise Captured("options captured")

    monkeypatch.setattr(bnclaims.runner, "run_claims", record)
    return seen


@pytest.mark.parametrize("cli_args, pytest_args", [
    ((), ()),
    (("--seeds", "3", "--seed-base", "100", "--no-cache", "--jobs", "1", "--timeout", "7.5", "--memory-limit", "2048"),
     ("--bnclaims-seeds", "3", "--bnclaims-seed-base", "100", "--bnclaims-no-cache", "--bnclaims-jobs", "1",
      "--bnclaims-timeout", "7.5", "--bnclaims-memory-limit", "2048")),
], ids=["defaults", "every-option"])
def test_a_claim_under_pytest_gets_the_run_options_bnclaims_run_gives_it(pytester, monkeypatch, capture_options,
                                                                          clean_env, cli_args, pytest_args):
    project = make_project(pytester.path)
    add(project, "toy-a")
    write(project / "pyproject.toml", "[tool.bnclaims]\ncache-dir = 'cache'\n\n[tool.pytest.ini_options]\n")
    monkeypatch.setenv("BNCLAIMS_EXPERIMENTS", "toy_experiments")
    monkeypatch.chdir(project)

    assert main(["run", "claims/toy-a.yaml", *cli_args]) == 1  # the stand-in's error: the run stops there
    pytester.inline_run("claims/toy-a.yaml", "-p", "no:cacheprovider", *pytest_args)
    cli, plugin = capture_options
    assert cli == plugin
    assert plugin.memory_limit == (2048 if cli_args else app.MEMORY_LIMIT_MIB) << 20  # the plugin had none before
    assert plugin.timeout == (7.5 if cli_args else None)  # None: each claim's own timeout
    assert plugin.modules == ("toy_experiments",) and plugin.cache_dir == project / "cache"


def test_the_memory_limit_reaches_workers_under_pytest(tmp_path):
    project = make_project(tmp_path / "project")
    add(project, "greedy", experiment="toy-fault", params="{fault: memory}", seeds=1, expected=None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "claims/greedy.yaml",
                             "--bnclaims-cache-dir", "cache"], cwd=project, env=env_for_toys(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "  error:    seed 0: out of memory (MemoryError)" in result.stdout.splitlines(), result.stdout


# --------------------------------------------------------------------------- one failure text

def _report(output: str, claim_id: str) -> str:
    lines = output.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"claim {claim_id}: got ")))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("  page:"))
    return "\n".join(lines[start:end + 1])


def test_bnclaims_run_and_pytest_print_the_same_failure_report(tmp_path):
    project = make_project(tmp_path / "project")
    add(project, "toy-wrong", expected="refuted")
    add(project, "toy-broken", experiment="toy-fault", params="{fault: raise}", expected="supported")
    write(project / "pyproject.toml", "[tool.bnclaims]\ncache-dir = 'cache'\n\n[tool.pytest.ini_options]\n")
    cli = bnclaims(project, "run", "--jobs", "1", "--no-cache", timeout=300)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    tests = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--bnclaims-no-cache",
                            "--bnclaims-jobs", "1", "claims/"], cwd=project, env=env_for_toys(),
                           capture_output=True, text=True, timeout=300)
    assert tests.returncode == 1, tests.stdout + tests.stderr
    for claim_id, evidence in (("toy-wrong", "  conditions (6 seeds, 95% CI each, 95% family-wise):"),
                               ("toy-broken", "  error:    seed 0: RuntimeError: boom from the experiment")):
        report = _report(cli.stdout, claim_id)
        assert report == _report(tests.stdout, claim_id)
        assert any(line.startswith(evidence) for line in report.splitlines()), report
        assert report.endswith(f"  page:     site/claims/{claim_id}.html (not built yet: bnclaims build)")


# --------------------------------------------------------------------------- one t-interval

def test_series_summaries_use_the_metric_interval_point_by_point():
    import numpy as np

    from bnclaims.results import summarize_metric, summarize_series
    from bnclaims.verdict import mean_interval

    runs = [[1.0, 2.0, None, 5.0], [3.0, None, None], [2.5, 7.0, None, float("nan")]]
    summary = summarize_series(runs)
    assert summary.n == (3, 2, 0, 1)
    for point, values in ((0, [1.0, 3.0, 2.5]), (1, [2.0, 7.0])):
        mean, low, high, _ = mean_interval(np.array(values))
        assert (summary.mean[point], summary.ci_low[point], summary.ci_high[point]) == (mean, low, high)
        metric = summarize_metric(values)
        assert (metric.mean, metric.ci_low, metric.ci_high) == (mean, low, high)
    assert (summary.mean[2], summary.ci_low[2], summary.ci_high[2]) == (None, None, None)  # no seed has a value
    assert (summary.mean[3], summary.ci_low[3], summary.ci_high[3]) == (5.0, None, None)  # one seed: no interval
    assert summarize_series([]) == summarize_series([[]])
