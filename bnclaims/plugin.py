"""The pytest plugin: every claim file is one test item, named by its claim id.

Installed with the package (entry point ``pytest11``), so ``pytest claims/`` just works.
A ``*.yaml``/``*.yml`` file is a claim file when its directory has a ``threads/``
subdirectory -- the layout the engine loads claims from (``claims/threads/`` holds the
quoted threads); YAML anywhere else (CI configs, fixtures) is left alone.

The item passes when the verdict equals the claim's ``expected`` (or, with none declared,
when the claim ran without error). Claims are not run one by one: the first claim item
to run sends every selected claim through ``run_claims`` in one parallel pass (with the
same cache as the CLI), and each item then looks up its result. Under pytest-xdist each
worker runs its own items as they come, with ``cores / workers`` processes each.

Nothing heavy is imported at module level: the plugin is loaded by every pytest run in
the environment, so numpy/scipy are imported only once a claim file is collected.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import time
from pathlib import Path

import pytest

CLAIM_SUFFIXES = (".yaml", ".yml")
VERDICT_PROPERTY = "bnclaims_verdict"  # user_properties key: shown in -v output and in --junitxml


# --------------------------------------------------------------------------- options

def _int_at_least(minimum: int, maximum=None):
    """An int option in ``minimum..maximum`` (``maximum`` an int or a function giving it), as the CLI's."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (found {value})")
        top = maximum() if callable(maximum) else maximum
        if top is not None and value > top:
            raise argparse.ArgumentTypeError(f"must be at most {top} (found {value})")
        return value

    return parse


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bnclaims", "bnclaims claims (claim files as test items)")
    group.addoption("--bnclaims-seeds", type=_int_at_least(1, 10_000), metavar="N",
                    help="override every claim's number of seeds")
    group.addoption("--bnclaims-seed-base", type=_int_at_least(0), default=0, metavar="N",
                    help="first seed; seeds are N..N+count-1 (default 0)")
    group.addoption("--bnclaims-no-cache", action="store_true", help="run every seed again, ignoring cached results")
    group.addoption("--bnclaims-jobs", type=_int_at_least(0, lambda: 4 * (os.cpu_count() or 1)), default=0,
                    metavar="N",
                    help="worker processes (default: [tool.bnclaims] jobs, else all cores; under xdist, "
                         "that / xdist workers)")
    group.addoption("--bnclaims-cache-dir", metavar="DIR",
                    help="result cache (default: the CLI's, [tool.bnclaims] cache-dir, else "
                         "$XDG_CACHE_HOME/bnclaims or ./.bnclaims-cache)")
    group.addoption("--bnclaims-experiments", action="append", default=[], metavar="MODULE",
                    help="also import experiments from this module (repeatable; else $BNCLAIMS_EXPERIMENTS, "
                         "comma-separated, else [tool.bnclaims] experiments, else the ini option "
                         "bnclaims_experiments)")
    parser.addini("bnclaims_experiments", type="linelist", default=[],
                  help="modules with extra experiments for bnclaims claims (an alias of [tool.bnclaims] "
                       "experiments, which wins)")


def project_config(config: pytest.Config):
    """``[tool.bnclaims]`` of the nearest pyproject.toml from the invocation directory (``bnclaims.config``,
    read as the CLI reads it), once per session."""
    project = config.stash.get(_PROJECT, None)
    if project is None:
        from bnclaims import config as bnconfig
        from bnclaims.errors import UserError

        try:
            project = bnconfig.load(config.invocation_params.dir)
        except UserError as e:
            raise pytest.UsageError(f"bnclaims: {e}") from None
        config.stash[_PROJECT] = project
    return project


def experiment_modules(config: pytest.Config) -> tuple[str, ...]:
    """--bnclaims-experiments, else $BNCLAIMS_EXPERIMENTS, else [tool.bnclaims] experiments, else the ini key."""
    from bnclaims import config as bnconfig

    modules, _ = bnconfig.experiment_modules(config.getoption("bnclaims_experiments"), project_config(config),
                                             config.getini("bnclaims_experiments"))
    return modules


def pytest_configure(config: pytest.Config) -> None:
    from bnclaims import config as bnconfig

    project = project_config(config)
    bnconfig.add_import_paths(project)  # before importing the modules; workers inherit sys.path
    cores = os.cpu_count() or 1
    if project.jobs is not None and not config.getoption("bnclaims_jobs") and project.jobs > 4 * cores:
        raise pytest.UsageError(f"bnclaims: {project.where('jobs')} must be 1..{4 * cores} on this machine "
                                f"({cores} cores) (found {project.jobs})")
    for module in experiment_modules(config):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise pytest.UsageError(f"bnclaims: cannot import experiments module {module!r} ({e})") from None
    config.stash[_RUNNER] = ClaimRunner(config)


# --------------------------------------------------------------------------- collection

def is_claim_file(path: Path) -> bool:
    return path.suffix in CLAIM_SUFFIXES and (path.parent / "threads").is_dir()


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if is_claim_file(file_path):
        return ClaimFile.from_parent(parent, path=file_path)
    return None


class ClaimFile(pytest.File):
    """One claim file; yields one ClaimItem, or fails to collect with the loader's one-line problems."""

    def collect(self):
        from bnclaims.claims import load_claims

        claims, problems = load_claims([self.path])
        runner = self.config.stash[_RUNNER]
        if problems:
            runner.invalid_files += 1
            raise self.CollectError("\n".join(str(p) for p in problems))  # shown as is, no traceback
        for claim in claims:
            item = ClaimItem.from_parent(self, name=claim.id, claim=claim)
            for tag in claim.tags:
                if tag not in runner.tags:  # registered as met: --strict-markers accepts them, -m needs nothing
                    runner.tags.add(tag)
                    self.config.addinivalue_line("markers", f"{tag}: bnclaims claims tagged '{tag}'")
                item.add_marker(tag)
            yield item


class ClaimFailed(Exception):
    """The claim's verdict differs from its declared ``expected`` (or the claim errored)."""

    def __init__(self, result):
        super().__init__(f"{result.id}: {result.status}")
        self.result = result


class ClaimItem(pytest.Item):
    def __init__(self, *, claim, **kwargs):
        super().__init__(**kwargs)
        self.claim = claim

    def runtest(self) -> None:
        result = self.config.stash[_RUNNER].result(self)
        self.user_properties.append((VERDICT_PROPERTY, result.status))
        if not result.matches_expected:
            raise ClaimFailed(result)

    def repr_failure(self, excinfo, style=None):
        from bnclaims.errors import BnclaimsError

        if isinstance(excinfo.value, ClaimFailed):
            return failure_report(excinfo.value.result, site_page(self.config, self.claim.id))
        if isinstance(excinfo.value, BnclaimsError):
            return f"{self.claim.id}: {excinfo.value}"
        return super().repr_failure(excinfo, style)  # a bug in bnclaims: the traceback helps

    def reportinfo(self):
        return self.path, self.claim.line - 1, f"claim {self.claim.id}"


# --------------------------------------------------------------------------- running

@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Invalid claim files must not stop the valid ones (as in ``bnclaims run``): when they are
    the only collection errors, run the rest anyway; the errors are still reported and fail the run."""
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None and runner.invalid_files and session.testsfailed == runner.invalid_files:
        session.config.option.continue_on_collection_errors = True


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """An invalid claim file makes the run exit 2, as ``bnclaims check/run/build`` do."""
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None and runner.invalid_files and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        session.exitstatus = pytest.ExitCode.INTERRUPTED  # == 2


class ClaimRunner:
    """Runs claims for the session and keeps their results by node id."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.results: dict[str, object] = {}  # node id -> ClaimResult, or the BnclaimsError of its batch
        self.invalid_files = 0  # claim files that failed to collect
        self.tags: set[str] = set()  # tags registered as markers
        self.seconds = 0.0
        self.xdist_workers = int(getattr(config, "workerinput", {}).get("workercount", 0))

    def options(self):
        from bnclaims.runner import RunOptions

        config = self.config
        project = project_config(config)
        jobs = config.getoption("bnclaims_jobs")
        if not jobs and self.xdist_workers:  # xdist already runs workers in parallel
            jobs = max(1, (project.jobs or os.cpu_count() or 1) // self.xdist_workers)
        jobs = jobs or project.jobs or 0
        cache_dir = config.getoption("bnclaims_cache_dir")
        return RunOptions(
            jobs=jobs, seeds=config.getoption("bnclaims_seeds"), seed_base=config.getoption("bnclaims_seed_base"),
            use_cache=not config.getoption("bnclaims_no_cache"),
            cache_dir=config.invocation_params.dir / cache_dir if cache_dir else project.cache_dir,
            modules=experiment_modules(config),
        )

    def result(self, item: ClaimItem):
        if item.nodeid not in self.results:
            self.run(self.batch(item))
        outcome = self.results[item.nodeid]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def batch(self, item: ClaimItem) -> list[ClaimItem]:
        """Every selected claim not yet run (under xdist, only ``item``: others may go to other workers)."""
        if self.xdist_workers:
            return [item]
        pending = [i for i in item.session.items if isinstance(i, ClaimItem) and i.nodeid not in self.results]
        return pending if item in pending else [item, *pending]

    def run(self, items: list[ClaimItem]) -> None:
        from bnclaims.errors import BnclaimsError
        from bnclaims.runner import run_claims

        start = time.perf_counter()
        try:
            results = run_claims([i.claim for i in items], self.options(), progress=False)
        except BnclaimsError as e:
            self.results.update((i.nodeid, e) for i in items)
        else:
            self.results.update((i.nodeid, r) for i, r in zip(items, results))
        finally:
            self.seconds += time.perf_counter() - start


_RUNNER = pytest.StashKey[ClaimRunner]()
_PROJECT = pytest.StashKey[object]()  # the bnclaims.config.ProjectConfig of the session


# --------------------------------------------------------------------------- reporting

def site_page(config: pytest.Config, claim_id: str) -> str:
    page = config.rootpath / "site" / "claims" / f"{claim_id}.html"
    try:
        shown = str(page.relative_to(config.invocation_params.dir))
    except ValueError:
        shown = str(page)
    return shown if page.is_file() else f"{shown} (not built yet: bnclaims build)"


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def _condition_line(c, width: int) -> str:
    p = f", p = {c.p_value:.3g}" if c.p_value is not None else ""
    return (f"    {c.verdict:<12} {c.name:<{width}}  {c.text}: estimate {_num(c.estimate)}, "
            f"CI [{_num(c.ci_low)}, {_num(c.ci_high)}]{p}")


def failure_report(result, page: str) -> str:
    """What a failing claim says: the claim, expected vs got, the evidence, where to read more."""
    from bnclaims.claims import display_path

    claim = result.claim
    expected = claim.expected or "no error (no 'expected:' declared)"
    seeds = f"seeds {result.seeds[0]}..{result.seeds[-1]}" if result.seeds else "no seeds"
    lines = [
        f"claim {claim.id}: got {result.status}, expected {claim.expected or 'no error'}",
        f"  title:    {claim.title}",
        f"  expected: {expected}",
        f"  got:      {result.status}",
    ]
    if result.status == "error":
        lines.append(f"  error:    {result.error}")
    else:
        lines.append(f"  reason:   {result.reason}")
        level = f"{100 * result.verdict.level:.4g}%"
        lines.append(f"  conditions ({len(result.runs)} seeds, {level} CI each, 95% family-wise):")
        width = max(len(c.name) for c in result.verdict.conditions + result.verdict.beyond)
        for c in result.verdict.conditions:
            lines.append(_condition_line(c, width))
        if result.verdict.beyond:
            lines.append("  beyond the sentence (95% CI; does not change the verdict):")
            lines.extend(_condition_line(c, width) for c in result.verdict.beyond)
    cached = sum(r.cached for r in result.runs)
    lines.append(f"  runs:     {seeds} ({len(result.seeds)} seeds, {cached} cached) of experiment {claim.experiment}")
    lines.append(f"  file:     {display_path(claim.path)}:{claim.line}")
    lines.append(f"  page:     {page}")
    return "\n".join(lines)


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    """-v shows the verdict of a passing claim: ``PASSED (refuted)``."""
    if report.when == "call" and report.passed:
        verdict = dict(report.user_properties).get(VERDICT_PROPERTY)
        if verdict:
            return "passed", ".", (f"PASSED ({verdict})", {"green": True})
    return None


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    runner = config.stash.get(_RUNNER, None)
    if runner is None or not runner.results:
        return
    results = [r for r in runner.results.values() if not isinstance(r, BaseException)]
    seeds = sum(len(r.runs) for r in results)
    cached = sum(run.cached for r in results for run in r.runs)
    claims = f"{len(runner.results)} claim" + ("s" if len(runner.results) != 1 else "")
    terminalreporter.write_line(
        f"bnclaims: {claims}, {seeds} seed runs ({cached} from cache) in {runner.seconds:.1f} s")
