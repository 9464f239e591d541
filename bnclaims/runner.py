"""Run claims: (claim, seed) jobs through an executor and the cache, then verdicts.

``run_claims`` looks every seed up in the cache, sends the missing ones to the executor
(workers started only if something is missing), stores each finished seed at once (so an
interrupted run keeps what it finished), aggregates per claim and judges the rule.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bnclaims import experiments as registry
from bnclaims import schedule
from bnclaims.cache import Cache, code_hashes, digest, valid_run, versions
from bnclaims.claims import Claim
from bnclaims.executor import Executor, Job, LocalExecutor, Outcome
from bnclaims.results import ClaimResult, SeedRun, build_result


@dataclass(frozen=True)
class RunOptions:
    jobs: int = 0  # 0 = all cores
    seeds: int | None = None  # override every claim's seed count
    seed_base: int = 0
    use_cache: bool = True
    cache_dir: Path | None = None
    timeout: float | None = None  # override every claim's timeout
    modules: tuple[str, ...] = ()  # extra experiment modules to import (workers too)
    memory_limit: int | None = None  # bytes of address space per worker
    seed_store: Path | None = None  # a built site's results/ folder: seeds found there are not run again
    times_from: Path | None = None  # a built site's results/ folder whose recorded CPU seconds order the jobs
    debug: bool = False  # show what experiments print (always shown, in short, for a seed that fails)

    def n_jobs(self) -> int:
        return self.jobs if self.jobs > 0 else (os.cpu_count() or 1)


@dataclass
class Plan:
    """What a run will do for one claim, and why."""

    claim: Claim
    seeds: list[int]
    keys: list[str]
    input_hash: str
    components: dict
    cached: dict[int, dict] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    site_hash: str = ""


def _components(claim: Claim, seeds: list[int]) -> dict:
    exp = registry.get(claim.experiment)
    return {
        "experiment": claim.experiment,
        "params": claim.run_params(),
        "code": code_hashes(exp.module),
        "versions": versions(),
        "seeds": [seeds[0], seeds[-1]] if seeds else [],
    }


def seed_key(components: dict, seed: int) -> str:
    return digest({k: components[k] for k in ("experiment", "params", "code", "versions")} | {"seed": seed})


def store_key(components: dict, seed: int) -> str:
    """A seed's key in a site's results: like ``seed_key`` but without library versions (the stored
    run says which versions and BLAS kernel computed it)."""
    return digest({k: components[k] for k in ("experiment", "params", "code")} | {"seed": seed})


def site_hash(claim: Claim, components: dict, seeds: list[int]) -> str:
    """What a claim's page depends on, without library versions: the committed site is keyed by it."""
    return digest({"claim": claim.content_hash(), **{k: components[k] for k in ("experiment", "params", "code")},
                   "seeds": seeds})


class SeedStore:
    """The seed runs a built site was made from (``<site>/results/<claim id>.json``), by ``store_key``.

    ``bnclaims build`` reads them before the cache, so a fresh clone rebuilds the committed site
    without running a seed and without changing a byte; ``--no-cache`` ignores them."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self._runs: dict[str, dict] | None = None

    @property
    def runs(self) -> dict[str, dict]:
        if self._runs is None:
            self._runs = {}
            if self.directory is not None and self.directory.is_dir():
                for path in sorted(self.directory.glob("*.json")):
                    try:
                        data = json.loads(path.read_bytes())
                    except (OSError, ValueError, RecursionError):
                        continue  # not a results file: nothing to reuse from it
                    for run in data.get("runs", []) if isinstance(data, dict) else []:
                        if isinstance(run, dict) and isinstance(run.get("key"), str) and valid_run(run, run["key"]):
                            self._runs[run["key"]] = run
        return self._runs

    def get(self, key: str, metrics: frozenset[str], series: frozenset[str]) -> dict | None:
        run = self.runs.get(key)
        if run is None or set(run["metrics"]) != metrics or set(run["series"]) != series:
            return None
        return run


def _reasons(previous: dict | None, components: dict, use_cache: bool, n_missing: int, n_total: int) -> list[str]:
    if not use_cache:
        return ["--no-cache"]
    if n_missing == 0:
        return [f"all {n_total} seeds cached"]
    if previous is None:
        if n_missing < n_total:  # seeds are cached but the claim never finished: an interrupted run
            return [f"{n_total - n_missing} of {n_total} seeds cached by an earlier run that did not finish; "
                    f"{n_missing} to run"]
        return [f"first run ({n_missing} of {n_total} seeds to run)"]
    old = previous.get("components", {})
    reasons = []
    if old.get("experiment") != components["experiment"]:
        reasons.append(f"experiment changed ({old.get('experiment')} -> {components['experiment']})")
    if old.get("params") != components["params"]:
        changed = sorted(k for k in set(old.get("params", {})) | set(components["params"])
                         if old.get("params", {}).get(k) != components["params"].get(k))
        reasons.append("params changed: " + ", ".join(changed))
    old_code, new_code = old.get("code", {}), components["code"]
    changed_files = sorted(f for f in set(old_code) | set(new_code) if old_code.get(f) != new_code.get(f))
    if changed_files:
        reasons.append("code changed: " + ", ".join(changed_files))
    if old.get("versions") != components["versions"]:
        reasons.append("versions changed: " + ", ".join(
            f"{k} {old.get('versions', {}).get(k)} -> {v}" for k, v in components["versions"].items()
            if old.get("versions", {}).get(k) != v))
    if old.get("seeds") != components["seeds"]:
        reasons.append(f"seeds changed ({old.get('seeds')} -> {components['seeds']})")
    reasons.append(f"{n_missing} of {n_total} seeds to run")
    return reasons


def plan(claims: list[Claim], options: RunOptions, cache: Cache) -> list[Plan]:
    plans = []
    store = SeedStore(options.seed_store) if options.use_cache and options.seed_store else None
    for claim in claims:
        exp = registry.get(claim.experiment).resolved(claim.run_params())  # names may follow from params
        names = frozenset(exp.metrics), frozenset(exp.series)
        count = options.seeds or claim.seeds
        seeds = list(range(options.seed_base, options.seed_base + count))
        components = _components(claim, seeds)
        keys = [seed_key(components, s) for s in seeds]
        input_hash = digest({"claim": claim.content_hash(), **components, "seeds": seeds})
        p = Plan(claim, seeds, keys, input_hash, components, site_hash=site_hash(claim, components, seeds))
        from_site = 0
        if options.use_cache:
            for seed, key in zip(seeds, keys):
                hit = store.get(store_key(components, seed), *names) if store else None
                from_site += hit is not None
                hit = hit if hit is not None else cache.get_run(key, *names)
                if hit is not None:
                    p.cached[seed] = hit
        p.reasons = _reasons(cache.get_claim(claim.id), components, options.use_cache,
                             len(seeds) - len(p.cached), len(seeds))
        if from_site:
            p.reasons.append(f"{from_site} of {len(seeds)} seeds from the results the site was built from")
        plans.append(p)
    return plans


class Progress:
    """Progress on stderr: a one-line display on a terminal; elsewhere (CI, a log file) a plain
    heartbeat line every ``HEARTBEAT`` seconds, so a long run is never silent."""

    HEARTBEAT = 10.0

    def __init__(self, total: int, enabled: bool, claims: int = 0):
        self.total, self.done, self.errors = total, 0, 0
        self.claims, self.claims_done = claims, 0
        self.tty = enabled and total > 0 and sys.stderr.isatty()
        self.heartbeat = enabled and total > 0 and not self.tty
        self.enabled = self.tty
        self.start = self.last_beat = time.perf_counter()

    def claim_done(self) -> None:
        self.claims_done += 1

    def update(self, label: str, ok: bool) -> None:
        self.done += 1
        self.errors += not ok
        now = time.perf_counter()
        elapsed = now - self.start
        errors = f", {self.errors} errors" if self.errors else ""
        if self.tty:
            eta = elapsed / self.done * (self.total - self.done)
            sys.stderr.write(f"\r\033[K[{self.done}/{self.total}] {label}{errors} — {elapsed:.0f}s, ~{eta:.0f}s left")
            sys.stderr.flush()
        elif self.heartbeat and (now - self.last_beat >= self.HEARTBEAT or self.done == self.total):
            self.last_beat = now
            claims = f"{self.claims_done}/{self.claims} claims done, " if self.claims else ""
            sys.stderr.write(f"bnclaims: {claims}{self.done}/{self.total} seeds run{errors}, {elapsed:.0f} s\n")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def run_claims(
    claims: list[Claim],
    options: RunOptions = RunOptions(),
    *,
    executor: Executor | None = None,
    progress: bool = True,
    on_claim: Callable[[ClaimResult], None] | None = None,
    cache: Cache | None = None,
    ladder: str = "off",
) -> list[ClaimResult]:
    """Run every claim (cache first), return one ClaimResult per claim, in the given order.

    ``ladder``: "off" runs no rung; "stored" judges the rungs whose every seed is in the cache or the
    site's results (nothing is run for them); "run" runs the rungs too. A rung is judged like a claim
    (`Claim.at_rung`) and comes back in its base claim's ``result.ladder`` as (rung, result), with
    None for a rung not judged ("not run").
    """
    cache = cache or Cache(options.cache_dir or _default_cache())
    rung_claims = [claim.at_rung(rung) for claim in claims for rung in claim.ladder] if ladder != "off" else []
    plans = plan(claims + rung_claims, options, cache)
    if ladder == "stored":  # rungs not run before stay "not run": a plain run or build never starts them
        plans = [p for p in plans if p.claim.rung is None or len(p.cached) == len(p.seeds)]
    jobs: list[Job] = []
    owners: dict[int, list[Plan]] = {}  # claims with the same experiment, params and seed share one job
    job_of_key: dict[str, Job] = {}
    for p in plans:
        timeout = options.timeout or p.claim.timeout
        params = p.components["params"]
        for seed, key in zip(p.seeds, p.keys):
            if seed in p.cached:
                continue
            if key not in job_of_key:
                job_of_key[key] = Job(len(jobs), p.claim.experiment, seed, params, timeout)
                jobs.append(job_of_key[key])
                owners[job_of_key[key].id] = []
            owners[job_of_key[key].id].append(p)
    fresh: dict[int, dict[int, dict]] = {id(p): {} for p in plans}
    errors: dict[int, dict[int, str]] = {id(p): {} for p in plans}
    left = {id(p): len(p.seeds) - len(p.cached) for p in plans}
    results: dict[int, ClaimResult] = {}
    tracker = Progress(len(jobs), progress, len(plans))

    def finish(p: Plan) -> None:
        runs = []
        for seed, key in zip(p.seeds, p.keys):
            if seed in p.cached:
                entry = p.cached[seed]
                runs.append(SeedRun(seed, entry["metrics"], entry["series"], entry["seconds"], True,
                                    entry.get("cpu_seconds", entry["seconds"]),
                                    entry.get("versions", p.components["versions"]), entry.get("blas")))
            elif seed in fresh[id(p)]:
                entry = fresh[id(p)][seed]
                runs.append(SeedRun(seed, entry["metrics"], entry["series"], entry["seconds"], False,
                                    entry["cpu_seconds"], p.components["versions"], entry.get("blas")))
        result = build_result(p.claim, p.seeds, runs, errors[id(p)], p.input_hash, p.components, p.reasons,
                              p.site_hash)
        cache.put_claim(p.claim.id, result.summary_record())
        results[id(p)] = result
        tracker.claim_done()
        if on_claim:
            on_claim(result)

    for p in plans:
        if left[id(p)] == 0:
            finish(p)

    def on_done(job: Job, outcome: Outcome) -> None:
        sharing = owners[job.id]
        if outcome.status == "ok":
            entry = {**outcome.payload, "seconds": outcome.seconds}
            cache.put_run(sharing[0].keys[sharing[0].seeds.index(job.seed)], entry)
        if outcome.output and options.debug:
            tracker.clear()
            sys.stderr.write(f"--- output of {sharing[0].claim.id} seed {job.seed} ---\n{outcome.output}"
                             f"{'' if outcome.output.endswith(chr(10)) else chr(10)}")
        for p in sharing:
            if outcome.status == "ok":
                fresh[id(p)][job.seed] = entry
            else:
                errors[id(p)][job.seed] = str(outcome.payload) + _printed(outcome.output)
            left[id(p)] -= 1
            if left[id(p)] == 0:
                finish(p)
        tracker.update(f"{sharing[0].claim.id} seed {job.seed}", outcome.status == "ok")

    try:
        if jobs:
            runner = executor or LocalExecutor(min(options.n_jobs(), len(jobs)), options.modules, options.memory_limit)
            # longest first, from the CPU seconds recorded when each job ran before: a shorter tail
            recorded = schedule.recorded_seconds(plans, cache, options.seed_store or options.times_from)
            runner.run(schedule.longest_first(jobs, recorded), on_done)
    finally:
        tracker.close()
    by_id = {p.claim.id: results[id(p)] for p in plans}
    return [_with_ladder(by_id[claim.id], by_id) if claim.ladder else by_id[claim.id] for claim in claims]


def _with_ladder(result: ClaimResult, by_id: dict[str, ClaimResult]) -> ClaimResult:
    return dataclasses.replace(result, ladder=tuple((rung, by_id.get(result.claim.rung_id(rung)))
                                                    for rung in result.claim.ladder))


def _printed(output: str) -> str:
    """The last line a failing seed printed, as a hint (all of it is shown with --debug)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1] if len(lines[-1]) <= 160 else lines[-1][:157] + "..."
    return f" (it printed {len(lines)} line{'s' * (len(lines) > 1)}, the last: {last!r}; see --debug)"


def _default_cache() -> Path:
    from bnclaims.cache import default_cache_dir

    return default_cache_dir()
