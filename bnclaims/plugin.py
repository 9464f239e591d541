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

Settings, experiments imports, run options (memory limit and timeout included) and the
failure report come from ``bnclaims.app``, as for ``bnclaims run``; this module only turns
pytest's options and items into them.

Nothing heavy is imported at module level: the plugin is loaded by every pytest run in
the environment, so numpy/scipy are imported only once a claim file is collected.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bnclaims import app

CLAIM_SUFFIXES = (".yaml", ".yml")
VERDICT_PROPERTY = "bnclaims_verdict"  # user_properties key: shown in -v output and in --junitxml


# --------------------------------------------------------------------------- options

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bnclaims", "bnclaims claims (claim files as test items)")
    group.addoption("--bnclaims-seeds", type=app.seed_count, metavar="N",
                    help=f"override every claim's number of seeds (1..{app.MAX_SEEDS})")
    group.addoption("--bnclaims-seed-base", type=app.seed_base, default=0, metavar="N",
                    help="first seed; seeds are N..N+count-1 (default 0)")
    group.addoption("--bnclaims-no-cache", action="store_true", help="run every seed again, ignoring cached results")
    group.addoption("--bnclaims-jobs", type=app.jobs, metavar="N",
                    help="worker processes (default: [tool.bnclaims] jobs, else all cores; under xdist, "
                         "that / xdist workers)")
    group.addoption("--bnclaims-cache-dir", metavar="DIR",
                    help="result cache (default: the CLI's, [tool.bnclaims] cache-dir, else "
                         "$XDG_CACHE_HOME/bnclaims or ./.bnclaims-cache)")
    group.addoption("--bnclaims-timeout", type=app.seconds, metavar="SECONDS",
                    help="time limit per seed, overriding each claim's 'timeout'")
    group.addoption("--bnclaims-memory-limit", type=app.memory_limit_mib, default=app.MEMORY_LIMIT_MIB,
                    metavar="MIB", help=f"address-space limit per worker process in MiB (default "
                                        f"{app.MEMORY_LIMIT_MIB}, as for bnclaims run)")
    group.addoption("--bnclaims-experiments", action="append", default=[], metavar="MODULE",
                    help="also import experiments from this module (repeatable; else $BNCLAIMS_EXPERIMENTS, "
                         "comma-separated, else [tool.bnclaims] experiments, else the ini option "
                         "bnclaims_experiments)")
    parser.addini("bnclaims_experiments", type="linelist", default=[],
                  help="modules with extra experiments for bnclaims claims (an alias of [tool.bnclaims] "
                       "experiments, which wins)")


def settings(config: pytest.Config) -> app.Settings:
    """The session's settings (``app.settings``, as the CLI resolves them), from pytest's options, the
    environment, ``[tool.bnclaims]`` of the nearest pyproject.toml from the invocation directory, and
    pytest's ini key ``bnclaims_experiments``; its ``paths`` are put on the import path. Once per session."""
    resolved = config.stash.get(_SETTINGS, None)
    if resolved is None:
        from bnclaims.errors import UserError

        cache_dir = config.getoption("bnclaims_cache_dir")
        try:
            resolved = app.settings(
                app.load_project(config.invocation_params.dir),
                cache_dir=config.invocation_params.dir / cache_dir if cache_dir else None,
                jobs=config.getoption("bnclaims_jobs"), jobs_flag="--bnclaims-jobs",
                experiments=config.getoption("bnclaims_experiments"),
                ini_experiments=config.getini("bnclaims_experiments"))
        except UserError as e:
            raise pytest.UsageError(f"bnclaims: {e}") from None
        config.stash[_SETTINGS] = resolved
    return resolved


def pytest_configure(config: pytest.Config) -> None:
    from bnclaims.errors import UserError

    resolved = settings(config)
    try:
        app.check_jobs(resolved.jobs, resolved.jobs_source)
        # the built-in experiments load with the first claim: a pytest run that collects none does not pay for them
        app.import_experiments(resolved.modules, builtin=False)
    except UserError as e:
        raise pytest.UsageError(f"bnclaims: {e}") from None
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
            page = app.site_page(self.config.rootpath / "site", self.claim.id)
            return app.failure_report(excinfo.value.result, page)
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
        """The run's ``RunOptions``, built as ``bnclaims run`` builds them (``app.run_options``)."""
        config = self.config
        return app.run_options(
            settings(config), seeds=config.getoption("bnclaims_seeds"), seed_base=config.getoption("bnclaims_seed_base"),
            use_cache=not config.getoption("bnclaims_no_cache"), timeout=config.getoption("bnclaims_timeout"),
            memory_limit_mib=config.getoption("bnclaims_memory_limit"),
            sharing=self.xdist_workers,  # xdist already runs workers in parallel
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
_SETTINGS = pytest.StashKey[app.Settings]()


# --------------------------------------------------------------------------- reporting

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
