"""Seed jobs start longest first, from the CPU seconds recorded when they ran before; unrecorded jobs
first; ties in a stable order; the order changes no result. And the list-scheduling simulation that
benchmarks/bench_runner.py prints, checked by hand on toy job lists."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import toy_experiments  # noqa: F401 - registers toy-normal (the local pool's worker imports it too)
from helpers import add, make_project

from bnclaims import app, config, schedule, worker
from bnclaims.cache import Cache
from bnclaims.claims import load_claims
from bnclaims.executor import Job, LocalExecutor, Outcome
from bnclaims.runner import RunOptions, plan, run_claims, seed_key

MODULES = ("toy_experiments",)


def job(seed: int, experiment: str = "toy-normal", params: dict | None = None) -> Job:
    return Job(seed, experiment, seed, params or {}, 60.0)


def times(*pairs: tuple[Job, float]) -> dict[str, float]:
    return {schedule.job_key(j.experiment, j.params, j.seed): seconds for j, seconds in pairs}


# --------------------------------------------------------------------------- the order

def test_longest_recorded_first_and_unrecorded_before_all():
    a, b, c, d, e = (job(s) for s in range(5))
    recorded = times((a, 1.5), (b, 30.0), (c, 0.2), (e, 4.0))  # d has no record
    assert [j.seed for j in schedule.longest_first([a, b, c, d, e], recorded)] == [3, 1, 4, 0, 2]


def test_ties_and_unrecorded_jobs_in_one_order_whatever_the_input_order():
    jobs = [job(2, "toy-b"), job(0, "toy-b"), job(1, "toy-a", {"mu": 2.0}), job(1, "toy-a", {"mu": 1.0}),
            job(5, "toy-a"), job(4, "toy-a")]
    recorded = times((jobs[4], 2.0), (jobs[5], 2.0), (jobs[0], 2.0))  # three equal, three unrecorded
    orders = {tuple((j.experiment, j.seed, json.dumps(j.params)) for j in schedule.longest_first(p, recorded))
              for p in itertools.permutations(jobs)}
    assert orders == {(("toy-a", 1, '{"mu": 1.0}'), ("toy-a", 1, '{"mu": 2.0}'), ("toy-b", 0, "{}"),  # unrecorded
                       ("toy-a", 4, "{}"), ("toy-a", 5, "{}"), ("toy-b", 2, "{}"))}  # 2.0 s each


def test_job_key_is_the_job_not_how_params_were_written():
    assert schedule.job_key("e", {"a": 1, "b": 2}, 3) == schedule.job_key("e", {"b": 2, "a": 1}, 3)
    assert schedule.job_key("e", {"a": 1}, 3) != schedule.job_key("e", {"a": 1}, 4)
    assert schedule.job_key("e", {"a": 1}, 3) != schedule.job_key("e", {"a": 2}, 3)


# --------------------------------------------------------------------------- where the seconds come from

@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_project(tmp_path)
    add(root, "toy-up", params="{mu: 1.0, n_points: 7}", seeds=5)
    add(root, "toy-down", params="{mu: -2.0}", seeds=6, expected="refuted")
    add(root, "toy-same", params="{mu: 1.0, n_points: 7}", seeds=3)  # shares its jobs with toy-up
    return root


def claims_of(project: Path):
    claims, problems = load_claims([project / "claims"])
    assert not problems
    return claims


class InProcess:
    """Runs the jobs here, one after another, in the order given (or reversed), and records that order."""

    def __init__(self, reverse: bool = False):
        self.reverse = reverse
        self.started: list[Job] = []

    def run(self, jobs, on_done):
        for j in (list(reversed(jobs)) if self.reverse else list(jobs)):
            self.started.append(j)
            status, payload, seconds = worker.run_job(j.experiment, j.seed, j.params, MODULES)
            on_done(j, Outcome(status, payload, seconds))


def comparable(result) -> dict:
    """A claim result without what depends on when and where it ran."""
    data = result.to_json()
    for timing in ("seconds", "cpu_seconds"):
        data.pop(timing)
    data["runs"] = [(r.seed, r.metrics, r.series, r.cached) for r in result.runs]
    return data


def set_cpu_seconds(cache_dir: Path, seconds: dict[str, float]) -> None:
    """Give cached seed runs chosen CPU seconds (by cache key), as if they had taken that long."""
    for key, value in seconds.items():
        path = cache_dir / "runs" / key[:2] / f"{key}.json"
        entry = json.loads(path.read_text())
        path.write_text(json.dumps({**entry, "cpu_seconds": value}))


def test_the_runner_starts_jobs_longest_first_by_the_seconds_the_cache_recorded(project, tmp_path):
    claims = claims_of(project)
    cache_dir = tmp_path / "cache"
    first = InProcess()
    run_claims(claims, RunOptions(cache_dir=cache_dir, modules=MODULES), executor=first, progress=False)
    assert len(first.started) == 5 + 6  # toy-same's 3 seeds are toy-up's first 3
    plans = {p.claim.id: p for p in plan(claims, RunOptions(cache_dir=cache_dir), Cache(cache_dir))}
    recorded = {("toy-up", 0): 3.0, ("toy-up", 1): 9.0, ("toy-up", 2): 1.0, ("toy-up", 3): 3.0, ("toy-up", 4): 0.5,
                ("toy-down", 0): 7.0, ("toy-down", 1): 0.1, ("toy-down", 2): 3.0, ("toy-down", 4): 2.0,
                ("toy-down", 5): 0.2}  # toy-down's seed 3: no record
    set_cpu_seconds(cache_dir, {seed_key(plans[claim].components, seed): value
                                for (claim, seed), value in recorded.items()})
    unrecorded = seed_key(plans["toy-down"].components, 3)
    (cache_dir / "runs" / unrecorded[:2] / f"{unrecorded}.json").unlink()
    again = InProcess()
    run_claims(claims, RunOptions(cache_dir=cache_dir, modules=MODULES, use_cache=False), executor=again,
               progress=False)
    # unrecorded first; of the three at 3.0 s, toy-down's first: its params sort first ({"mu": -2.0 before 1.0)
    assert [(j.params["mu"], j.seed) for j in again.started] == [
        (-2.0, 3), (1.0, 1), (-2.0, 0), (-2.0, 2), (1.0, 0), (1.0, 3), (-2.0, 4), (1.0, 2), (1.0, 4), (-2.0, 5),
        (-2.0, 1)]


def test_seconds_recorded_under_the_code_of_the_last_run_still_count(project, tmp_path):
    """After a code change no job is cached under its new key: the claim's last-run components find the times."""
    claims = [c for c in claims_of(project) if c.id == "toy-down"]
    cache = Cache(tmp_path / "cache")
    (p,) = plan(claims, RunOptions(cache_dir=cache.root), cache)
    old = {**p.components, "code": {"experiment.py": "an older version"}}
    for seed, seconds in zip(p.seeds, (4.0, 2.0, 8.0)):  # the other seeds never ran
        cache.put_run(seed_key(old, seed), {"metrics": {"x": 0.0, "y": 0.0}, "series": {}, "seconds": seconds,
                                            "cpu_seconds": seconds})
    cache.put_claim("toy-down", {"id": "toy-down", "verdict": "refuted", "components": old})
    (p,) = plan(claims, RunOptions(cache_dir=cache.root), cache)
    assert not p.cached  # other code: nothing to reuse, but the times are the same jobs' times
    params = p.components["params"]
    assert schedule.recorded_seconds([p], cache) == {schedule.job_key("toy-normal", params, s): t
                                                     for s, t in zip(p.seeds, (4.0, 2.0, 8.0))}


def test_a_sites_stored_runs_give_times_and_the_cache_wins_over_them(project, tmp_path):
    claims = [c for c in claims_of(project) if c.id == "toy-down"]
    cache = Cache(tmp_path / "cache")
    (p,) = plan(claims, RunOptions(cache_dir=cache.root), cache)
    params = p.components["params"]
    results = tmp_path / "site" / "results"
    results.mkdir(parents=True)
    (results / "toy-down.json").write_text(json.dumps({
        "id": "toy-down", "experiment": "toy-normal", "params": params, "code": {},
        "runs": [{"key": "k0", "seed": 0, "cpu_seconds": 5.0}, {"key": "k1", "seed": 1, "cpu_seconds": 6.0},
                 {"key": "k2", "seed": 2, "cpu_seconds": None}]}))
    (results / "broken.json").write_text("{not json")
    cache.put_run(seed_key(p.components, 1), {"metrics": {}, "series": {}, "seconds": 1.0, "cpu_seconds": 0.5})
    found = schedule.recorded_seconds([p], cache, results)
    assert found == {schedule.job_key("toy-normal", params, 0): 5.0, schedule.job_key("toy-normal", params, 1): 0.5}


def test_a_cold_run_takes_its_order_from_the_sites_results_without_reusing_them(project, tmp_path):
    """`bnclaims run` (no seed store) still reads the site's recorded times, and runs every seed."""
    claims = [c for c in claims_of(project) if c.id == "toy-down"]
    cache = Cache(tmp_path / "cache")
    (p,) = plan(claims, RunOptions(cache_dir=cache.root), cache)
    results = tmp_path / "site" / "results"
    results.mkdir(parents=True)
    runs = [{"key": f"k{s}", "seed": s, "cpu_seconds": float(t)} for s, t in enumerate((1, 9, 2, 8, 3, 7))]
    (results / "toy-down.json").write_text(json.dumps({"id": "toy-down", "experiment": "toy-normal",
                                                        "params": p.components["params"],
                                                        "runs": runs}))
    started = InProcess()
    run_claims(claims, RunOptions(cache_dir=cache.root, modules=MODULES, times_from=results), executor=started,
               progress=False)
    assert [j.seed for j in started.started] == [1, 3, 5, 4, 2, 0]
    assert app.run_options(app.settings(config.load(tmp_path))).times_from == Path("site/results")


# --------------------------------------------------------------------------- the order changes no result

def test_same_results_and_verdicts_under_two_orders(project, tmp_path):
    claims = claims_of(project)
    forward, backward = InProcess(), InProcess(reverse=True)
    a = run_claims(claims, RunOptions(cache_dir=tmp_path / "a", modules=MODULES), executor=forward, progress=False)
    b = run_claims(claims, RunOptions(cache_dir=tmp_path / "b", modules=MODULES), executor=backward, progress=False)
    assert [j.id for j in forward.started] == [j.id for j in reversed(backward.started)]
    assert [j.id for j in forward.started] != [j.id for j in backward.started]
    assert [r.status for r in a] == ["refuted", "supported", "supported"]  # toy-down, toy-same, toy-up
    assert [comparable(r) for r in a] == [comparable(r) for r in b]


def test_the_local_pool_starts_jobs_in_the_order_given():
    jobs = [job(s) for s in (3, 0, 4, 1, 2)]
    done = []
    LocalExecutor(1, MODULES).run(jobs, lambda j, outcome: done.append((j.seed, outcome.status)))
    assert done == [(3, "ok"), (0, "ok"), (4, "ok"), (1, "ok"), (2, "ok")]


def test_dask_starts_jobs_in_the_order_given():
    pytest.importorskip("distributed")
    import os

    from bnclaims.dask_executor import DaskExecutor

    environ = dict(os.environ)
    jobs = [job(s) for s in (3, 0, 4, 1, 2)]
    done = []
    try:
        DaskExecutor(None, 1, MODULES).run(jobs, lambda j, outcome: done.append((j.seed, outcome.status)))
    finally:
        os.environ.clear()  # the nannies set OMP_NUM_THREADS, ... here too
        os.environ.update(environ)
    assert done == [(3, "ok"), (0, "ok"), (4, "ok"), (1, "ok"), (2, "ok")]


# --------------------------------------------------------------------------- the simulation

def test_simulation_by_hand():
    # Graham's example: on 2 workers, 3 3 2 2 2 -> workers (3, 2, 2) and (3, 2): ends at 7, though 6 is possible
    lpt = schedule.simulate([3, 3, 2, 2, 2], 2)
    assert (lpt.wall, lpt.cpu, lpt.workers) == (7.0, 12.0, 2) and lpt.efficiency == 12 / 14
    assert schedule.bound([3, 3, 2, 2, 2], 2) == 6.0
    # a tail-bound order: 1 1 1 1 4 on 2 workers -> 1+1 each, then 4 at 2: ends at 6; longest first ends at 4
    assert schedule.simulate([1, 1, 1, 1, 4], 2).wall == 6.0
    assert schedule.simulate(sorted([1, 1, 1, 1, 4], reverse=True), 2).wall == 4.0
    assert schedule.simulate([1, 1, 1, 1, 4], 2).efficiency == 8 / 12
    # more workers than jobs: the idle ones count against efficiency; no jobs: nothing to wait for
    assert schedule.simulate([2, 2], 4).efficiency == 0.5
    assert schedule.simulate([], 3) == schedule.Simulation(3, 0.0, 0.0)
    assert schedule.bound([10, 1, 1], 4) == 10.0  # one job longer than the work per worker
