"""The order seed jobs start in: longest first, from the CPU seconds recorded when they ran before.

A pool whose free worker takes the next job is list scheduling; its wall time is set by the long
jobs that start last. Starting the longest first (LPT, Graham 1969) keeps that tail short.

A job is one (experiment, params, seed); its length is the CPU seconds recorded the last time that
same job ran, under any version of the code (a code change re-runs the job, and rarely changes its
length much): the cache entry of the claim's current or last-run components, else the seed runs a
built site keeps (``<site>/results/<claim id>.json``). A job with no record starts first: unknown
is assumed long. Ties (and unknown jobs) are ordered by (experiment, params, seed), so the same jobs
always start in the same order, whichever claims were selected and in which order.

The order never changes a result: a seed's result depends on its experiment, params and seed only.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bnclaims.cache import Cache, digest
from bnclaims.executor import Job


def job_key(experiment: str, params: dict, seed: int) -> str:
    """What identifies a seed job across code versions (unlike the cache's key)."""
    return digest({"experiment": experiment, "params": params, "seed": seed})


def _seconds(run: object) -> float | None:
    value = run.get("cpu_seconds") if isinstance(run, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def stored_seconds(directory: Path | None) -> dict[str, float]:
    """{job_key: CPU seconds} of the seed runs stored in a built site's ``results/`` folder."""
    found: dict[str, float] = {}
    if directory is None or not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError):
            continue  # not a results file: no times in it
        if not isinstance(data, dict) or not isinstance(data.get("experiment"), str):
            continue
        for run in data.get("runs", []) if isinstance(data.get("runs"), list) else []:
            seconds = _seconds(run)
            if seconds is not None and isinstance(run.get("seed"), int):
                found[job_key(data["experiment"], data.get("params"), run["seed"])] = seconds
    return found


def recorded_seconds(plans: Iterable, cache: Cache, seed_store: Path | None = None) -> dict[str, float]:
    """{job_key: CPU seconds} recorded for the seeds of ``plans`` (``runner.Plan``) that are not cached:
    the cache's entries under the plan's components and under the components of the claim's last run,
    then the site's stored runs for what the cache does not know."""
    from bnclaims.runner import seed_key  # the runner imports this module

    quiet = Cache(cache.root, warn=lambda message: None)  # an old entry it cannot read is just not a record
    found = stored_seconds(seed_store)
    for p in plans:
        previous = quiet.get_claim(p.claim.id)
        candidates = [p.components]
        old = previous.get("components", {}) if previous is not None else {}
        if all(k in old for k in ("experiment", "params", "code", "versions")):
            candidates.append(old)
        for seed in p.seeds:
            if seed in p.cached:
                continue
            for components in candidates:
                seconds = _seconds(quiet.get_run(seed_key(components, seed)))
                if seconds is not None:
                    found[job_key(components["experiment"], components["params"], seed)] = seconds
                    break
    return found


def _tie(job: Job) -> tuple:
    return job.experiment, json.dumps(job.params, sort_keys=True), job.seed


def longest_first(jobs: Sequence[Job], seconds: Mapping[str, float]) -> list[Job]:
    """``jobs`` in the order to start them: no record first, then by recorded seconds, longest first."""
    def order(job: Job) -> tuple:
        known = seconds.get(job_key(job.experiment, job.params, job.seed))
        return (0, 0.0, _tie(job)) if known is None else (1, -known, _tie(job))

    return sorted(jobs, key=order)


@dataclass(frozen=True)
class Simulation:
    """List scheduling of jobs of known lengths on ``workers`` identical workers, with no overhead."""

    workers: int
    wall: float  # when the last job ends
    cpu: float  # the jobs' lengths summed

    @property
    def efficiency(self) -> float:
        """CPU seconds over the worker seconds the run occupies (1 = no worker ever idle)."""
        return self.cpu / (self.workers * self.wall) if self.wall > 0 else 1.0


def simulate(durations: Sequence[float], workers: int) -> Simulation:
    """Each job, in the order given, starts on the worker that is free first (the lowest-numbered of
    those free at the same time), as the local pool and the Dask executor hand them out."""
    free = [(0.0, w) for w in range(max(1, workers))]  # (time the worker is free, worker number)
    wall = 0.0
    for duration in durations:
        start, w = heapq.heappop(free)
        end = start + duration
        wall = max(wall, end)
        heapq.heappush(free, (end, w))
    return Simulation(max(1, workers), wall, float(sum(durations)))


def bound(durations: Sequence[float], workers: int) -> float:
    """No order can finish before the longest job, or before the work spread evenly over the workers."""
    return max(max(durations, default=0.0), sum(durations) / max(1, workers))
