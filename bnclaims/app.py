"""The application layer under the command line (``cli.py``) and the pytest plugin (``plugin.py``).

Both front ends parse their own options and hand them here; what a run depends on is decided once,
so ``bnclaims run claims/x.yaml`` and ``pytest claims/x.yaml`` run a claim the same way:

- ``settings``: claims directory, cache, worker processes and experiments modules, first match wins:
  command line > environment (``$BNCLAIMS_EXPERIMENTS``) > ``[tool.bnclaims]`` of the nearest
  pyproject.toml (read by ``bnclaims.config``) > the pytest ini key ``bnclaims_experiments``;
- ``import_experiments``: the built-in experiments and the named modules, a failure in one line;
- ``run_options``: the ``RunOptions`` of a run, with one memory limit and timeout default for both;
- ``failure_report``: what a claim that errored or missed its ``expected`` verdict says.

Option values are checked by the parsers below (argparse types; pytest's ``addoption`` takes them too),
with the same bounds and messages in both front ends. Nothing heavy is imported at module level: the
plugin imports this module in every pytest run.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from bnclaims import config
from bnclaims.errors import UserError

MAX_SEEDS = 10_000  # as in claim files
MAX_DASK_JOBS = 256
MEMORY_LIMIT_MIB = 4096  # per worker process, unless --memory-limit / --bnclaims-memory-limit says otherwise
MEMORY_LIMIT_RANGE_MIB = (1, 1 << 20)  # 1 MiB .. 1 TiB (a tiny one makes the worker fail to start, said in one line)


# --------------------------------------------------------------------------- option values

def _int(text: str, low: int | None = None, high: int | None = None, what: str = "") -> int:
    value = int(text)
    if low is not None and value < low:
        raise argparse.ArgumentTypeError(f"must be {'0 or more' if low == 0 else f'at least {low}'} (found {value})")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high}{what} (found {value})")
    return value


def seed_count(text: str) -> int:
    """``--seeds``: 1..10000, as in claim files."""
    return _int(text, 1, MAX_SEEDS, ", as in claim files")


def seed_base(text: str) -> int:
    """``--seed-base``: 0 or more."""
    return _int(text, 0)


def jobs(text: str) -> int:
    """``--bnclaims-jobs``: 1..4 x the cores (the CLI's ``--jobs`` is checked by ``check_jobs`` once it knows
    whether the run goes to a Dask cluster)."""
    return _int(text, 1, max_jobs())


def seconds(text: str) -> float:
    """``--timeout``: a positive number of seconds."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive (found {text})")
    return value


def memory_limit_mib(text: str) -> int:
    """``--memory-limit``: MiB of address space per worker process."""
    value = int(text)
    low, high = MEMORY_LIMIT_RANGE_MIB
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {low}..{high} MiB (found {value})")
    return value


def max_jobs(dask: bool = False) -> int:
    """The most worker processes a run may ask for: 4 x the cores of this machine, or 256 on a Dask cluster."""
    return MAX_DASK_JOBS if dask else 4 * (os.cpu_count() or 1)


def check_jobs(jobs: int | None, source: str, dask: bool = False) -> None:
    """A number of worker processes from ``source`` (a flag or the table's key) is 1..``max_jobs``; None is
    the default (every core)."""
    if jobs is None:
        return
    limit = max_jobs(dask)
    if not 1 <= jobs <= limit:
        where = "with --executor dask" if dask else f"on this machine ({os.cpu_count() or 1} cores)"
        raise UserError(f"{source} must be 1..{limit} {where} (found {jobs})")


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    """Where a run's settings came from, resolved once (see the module docstring for the precedence)."""

    project: config.ProjectConfig
    claims: Path  # the claims directory the CLI reads (pytest collects wherever it looks)
    cache_dir: Path | None  # None: the default cache ($XDG_CACHE_HOME/bnclaims or ./.bnclaims-cache)
    jobs: int | None  # None: every core
    jobs_source: str  # how a message names it: the flag, or pyproject.toml [tool.bnclaims] jobs
    jobs_given: bool  # the command line set the jobs
    modules: tuple[str, ...]  # experiments modules to import, here and in every worker
    modules_source: str


def load_project(start: Path | None = None) -> config.ProjectConfig:
    """``[tool.bnclaims]`` of the nearest pyproject.toml from ``start`` (default: the working directory), its
    ``paths`` put on the import path (before any experiments module is imported; workers inherit it)."""
    project = config.load(start)
    config.add_import_paths(project)
    return project


def settings(project: config.ProjectConfig, *, claims: Path | None = None, cache_dir: Path | None = None,
             jobs: int | None = None, jobs_flag: str = "--jobs", experiments=(),
             ini_experiments=None) -> Settings:
    """Settings from what the command line gave (None or empty: not given), else the environment, else
    ``project`` (the table), else the pytest ini key ``ini_experiments`` (the plugin passes pytest's value;
    None: the one in the pyproject.toml's ``[tool.pytest.ini_options]``, as the CLI reads it)."""
    modules, modules_source = config.experiment_modules(experiments, project, ini_experiments)
    given = jobs is not None
    if not given and project.jobs is not None:
        jobs, jobs_source = project.jobs, project.where("jobs")
    else:
        jobs_source = jobs_flag
    return Settings(
        project=project,
        claims=claims if claims is not None else project.claims if project.claims is not None else Path("claims"),
        cache_dir=cache_dir if cache_dir is not None else project.cache_dir,
        jobs=jobs, jobs_source=jobs_source, jobs_given=given, modules=modules, modules_source=modules_source,
    )


# --------------------------------------------------------------------------- experiments

def import_experiments(modules: tuple[str, ...], builtin: bool = True) -> None:
    """Register the built-in experiments (unless ``builtin`` is False: they then load when the first claim
    runs) and import ``modules``; a module that cannot be imported is a UserError in one line."""
    import importlib

    if builtin:
        from bnclaims import registry

        registry.load_all()
    for module in modules:
        try:
            importlib.import_module(module)
        except UserError:
            raise  # a wrong experiment definition: its own one-line message
        except ImportError as e:
            raise UserError(f"cannot import experiments module {module!r} ({e})") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed while importing: one line
            detail = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"cannot import experiments module {module!r} ({type(e).__name__}: {detail})") from None


# --------------------------------------------------------------------------- run options

def run_options(settings: Settings, *, seeds: int | None = None, seed_base: int = 0, use_cache: bool = True,
                timeout: float | None = None, memory_limit_mib: int = MEMORY_LIMIT_MIB, debug: bool = False,
                seed_store: Path | None = None, sharing: int = 1, times_from: Path | None = Path("site/results")):
    """The ``RunOptions`` of a run. ``timeout`` overrides every claim's own (None: each claim's ``timeout:``);
    ``sharing`` processes run claims at once (pytest-xdist workers): unless the command line set the jobs,
    the default (the table's jobs, else every core) is divided among them. ``times_from``: a built site's
    results, read only for the CPU seconds each seed took there, so a cold run starts the longest first."""
    from bnclaims.runner import RunOptions

    jobs = settings.jobs
    if sharing > 1 and not settings.jobs_given:
        jobs = max(1, (jobs or os.cpu_count() or 1) // sharing)
    return RunOptions(jobs=jobs or 0, seeds=seeds, seed_base=seed_base, use_cache=use_cache,
                      cache_dir=settings.cache_dir, timeout=timeout, modules=settings.modules,
                      memory_limit=memory_limit_mib * 1024 * 1024, seed_store=seed_store, debug=debug,
                      times_from=times_from)


# --------------------------------------------------------------------------- failure report

def site_page(site: Path, claim_id: str) -> str:
    """Where a claim's page is (or will be) in the site directory ``site``, as a report shows it."""
    from bnclaims.claims import display_path

    page = site / "claims" / f"{claim_id}.html"
    shown = display_path(page)
    return shown if page.is_file() else f"{shown} (not built yet: bnclaims build)"


def _number(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def _condition_line(c, width: int) -> str:
    p = f", p = {c.p_value:.3g}" if c.p_value is not None else ""
    return (f"    {c.verdict:<12} {c.name:<{width}}  {c.text}: estimate {_number(c.estimate)}, "
            f"CI [{_number(c.ci_low)}, {_number(c.ci_high)}]{p}")


def failure_report(result, page: str) -> str:
    """What a failing claim says, under ``bnclaims run`` and under pytest alike: the claim, expected vs got,
    the evidence (each condition with its estimate and interval, or the error), the seeds, file and page."""
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
        lines.extend(_condition_line(c, width) for c in result.verdict.conditions)
        if result.verdict.beyond:
            lines.append("  beyond the sentence (95% CI; does not change the verdict):")
            lines.extend(_condition_line(c, width) for c in result.verdict.beyond)
    cached = sum(r.cached for r in result.runs)
    lines.append(f"  runs:     {seeds} ({len(result.seeds)} seeds, {cached} cached) of experiment {claim.experiment}")
    lines.append(f"  file:     {display_path(claim.path)}:{claim.line}")
    lines.append(f"  page:     {page}")
    return "\n".join(lines)
