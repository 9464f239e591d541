"""The Dask executor gives the local pool's results: same jobs, verdicts, metrics and cache,
even when a worker is killed mid-run. Runs when the `dask` extra is installed (CI installs it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import toy_experiments  # noqa: E402,F401 - registers toy-normal and toy-fault (also imported by the workers)

from bnclaims import worker  # noqa: E402
from bnclaims.claims import load_claims  # noqa: E402
from bnclaims.dask_executor import DaskExecutor  # noqa: E402
from bnclaims.errors import UserError  # noqa: E402
from bnclaims.executor import Job  # noqa: E402
from bnclaims.runner import RunOptions, run_claims  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODULES = ("toy_experiments",)

CLAIM = """\
id: {id}
title: Toy claim {id}
claim: x is positive on average
source:
  thread: 000_9d0fa3abc03cef76
  quote: "With fluctuating beta and gamma, the distribution also fluctuates."
tags: [toy]
experiment: {experiment}
params: {params}
seeds: {seeds}
rule:
  conditions:
    - name: positive
      holds: mean(x) > 0
      tests: "With fluctuating"
explanation: A toy.
scope: A toy scope.
"""

TOYS = {  # supported, refuted, a noisy one and one with a failing seed
    "toy-up": ("toy-normal", "{mu: 1.0, n_points: 7}", 8),
    "toy-down": ("toy-normal", "{mu: -2.0}", 6),
    "toy-flat": ("toy-normal", "{mu: 0.0, sd: 3.0}", 5),
    "toy-boom": ("toy-fault", "{fault: raise, fault_seed: 3}", 4),
}


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes (they inherit this process's sys.path, so toy_experiments)."""
    environ = dict(os.environ)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        with distributed.Client(c) as client:
            yield c, client
    os.environ.clear()  # the nannies set OMP_NUM_THREADS, PYTHONHASHSEED, ... here too; later tests inherit none
    os.environ.update(environ)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "claims").mkdir()
    shutil.copytree(ROOT / "claims" / "threads", tmp_path / "claims" / "threads",
                    ignore=shutil.ignore_patterns("*.map.yaml", "*.answer.yaml"))  # they name the real claims
    for claim_id, (experiment, params, seeds) in TOYS.items():
        (tmp_path / "claims" / f"{claim_id}.yaml").write_text(
            CLAIM.format(id=claim_id, experiment=experiment, params=params, seeds=seeds), encoding="utf-8")
    return tmp_path


def comparable(result) -> dict:
    """A claim result without what depends on when and where it ran."""
    data = result.to_json()
    for timing in ("seconds", "cpu_seconds"):
        data.pop(timing)
    data["runs"] = [(r.seed, r.metrics, r.series, r.cached) for r in result.runs]
    return data


def cache_entries(root: Path) -> dict:
    entries = {}
    for path in sorted((root / "runs").rglob("*.json")):
        data = json.loads(path.read_text())
        entries[path.name] = {k: v for k, v in data.items() if k not in ("seconds", "cpu_seconds")}
    return entries


def seed_jobs(experiment: str, params: dict, n: int, timeout: float = 60.0) -> list[Job]:
    return [Job(i, experiment, i, params, timeout) for i in range(n)]


def test_same_verdicts_metrics_and_cache_as_the_local_pool(project):
    claims, problems = load_claims([project / "claims"])
    assert not problems and len(claims) == len(TOYS)
    local = run_claims(claims, RunOptions(jobs=2, cache_dir=project / "local", modules=MODULES), progress=False)
    dask = run_claims(claims, RunOptions(cache_dir=project / "dask", modules=MODULES),
                      executor=DaskExecutor(None, 2, MODULES, 4 << 30), progress=False)  # its own LocalCluster
    verdicts = {r.id: r.status for r in local}
    assert verdicts == {"toy-up": "supported", "toy-down": "refuted", "toy-flat": verdicts["toy-flat"],
                        "toy-boom": "error"}
    assert "RuntimeError: boom from the experiment" in next(r.error for r in local if r.id == "toy-boom")
    assert [comparable(r) for r in dask] == [comparable(r) for r in local]
    assert cache_entries(project / "dask") == cache_entries(project / "local")
    assert len(cache_entries(project / "dask")) == 8 + 6 + 5 + 3  # every seed but the failed one is cached


def test_own_local_cluster_pins_blas_to_one_thread():
    def blas_env() -> dict:
        return {name: os.environ.get(name) for name in worker.BLAS_ENV}

    hashseed = os.environ.get("PYTHONHASHSEED")
    executor = DaskExecutor(None, 2, MODULES)
    with executor.client(n_jobs=2) as client:
        found = client.run(blas_env)
        assert sorted(client.nthreads().values()) == [1, 1]
    assert len(found) == 2 and os.environ.get("PYTHONHASHSEED") == hashseed  # set for the workers only
    assert all(env == {name: "1" for name in worker.BLAS_ENV} for env in found.values()), found


def test_killed_worker_loses_and_duplicates_nothing(cluster):
    _, client = cluster
    jobs = seed_jobs("toy-fault", {"fault": "sleep", "sleep": 0.3}, 12)
    expected = {job.id: worker.run_job(job.experiment, job.seed, job.params, MODULES)[1] for job in jobs}
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    delivered = []

    def on_done(job, outcome):
        delivered.append((job.id, outcome.status, outcome.payload))
        if len(delivered) == 2:  # both workers are busy with the next jobs
            os.kill(victim, signal.SIGKILL)

    DaskExecutor(client.scheduler.address, 2, MODULES).run(jobs, on_done)
    assert sorted(job_id for job_id, _, _ in delivered) == list(range(12))  # each job exactly once
    assert all(status == "ok" for _, status, _ in delivered), delivered
    for job_id, _, payload in delivered:
        assert {k: payload[k] for k in ("metrics", "series")} == {k: expected[job_id][k] for k in ("metrics", "series")}
    client.wait_for_workers(2, timeout=30)
    assert victim not in client.run(os.getpid).values()  # the worker really died (and its nanny replaced it)


def test_stuck_job_times_out_and_the_rest_complete(cluster):
    _, client = cluster
    jobs = seed_jobs("toy-fault", {"fault": "sleep", "fault_seed": 2, "sleep": 30.0}, 6, timeout=1.5)
    delivered = {}
    start = time.perf_counter()
    DaskExecutor(client.scheduler.address, 2, MODULES).run(jobs, lambda job, out: delivered.setdefault(job.id, out))
    assert time.perf_counter() - start < 20  # far less than the 30 s the stuck seed sleeps
    assert sorted(delivered) == list(range(6))
    assert [delivered[i].status for i in range(6)] == ["ok", "ok", "error", "ok", "ok", "ok"]
    assert delivered[2].payload == "seed 2: timed out after 1.5 s (raise 'timeout:' in the claim or --timeout)"


def test_worker_with_other_code_is_refused(cluster):
    from bnclaims.dask_executor import fingerprint, run_on_worker

    _, client = cluster
    expected = fingerprint("toy-normal", MODULES)
    assert client.submit(run_on_worker, "toy-normal", 0, {}, MODULES, expected, None, pure=False).result()[0] == "ok"
    stale = {**expected, "versions": {**expected["versions"], "numpy": "0.0"}}
    status, message, _ = client.submit(run_on_worker, "toy-normal", 0, {}, MODULES, stale, None, pure=False).result()
    assert status == "error" and "numpy" in message and "other code or versions" in message


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(UserError, match=r"install bnclaims\[dask\]"):
        DaskExecutor(None, 2)


def bnclaims(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), str(ROOT), env.get("PYTHONPATH", "")])
    env["BNCLAIMS_EXPERIMENTS"] = "toy_experiments"
    env.pop("XDG_CACHE_HOME", None)
    return subprocess.run([sys.executable, "-m", "bnclaims", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_executor_dask_matches_local(project, cluster):
    for claim_id in ("toy-flat", "toy-boom"):
        (project / "claims" / f"{claim_id}.yaml").unlink()
    local = bnclaims(project, "run", "--jobs", "2", "--cache-dir", "local", "--json", "local.json")
    own = bnclaims(project, "run", "--executor", "dask", "--jobs", "2", "--cache-dir", "own", "--json", "own.json")
    remote = bnclaims(project, "build", "--scheduler", cluster[0].scheduler_address, "--cache-dir", "remote",
                      "--json", "remote.json", "--out", "site")
    for out in (local, own, remote):
        assert out.returncode == 0, out.stderr
        assert "2 claims: 1 supported, 1 refuted" in out.stdout
        assert "Traceback" not in out.stderr
    assert (project / "site" / "index.html").is_file()

    def verdicts_and_metrics(name: str) -> list:
        claims = json.loads((project / name).read_text())["claims"]
        return [(c["id"], c["verdict"], c["metrics"], c["cached"]) for c in claims]

    assert verdicts_and_metrics("own.json") == verdicts_and_metrics("local.json")
    assert verdicts_and_metrics("remote.json") == verdicts_and_metrics("local.json")
    cached = bnclaims(project, "run", "--executor", "dask", "--cache-dir", "own", "--json", "again.json")
    assert cached.returncode == 0, cached.stderr
    assert all(c["cached"] for c in json.loads((project / "again.json").read_text())["claims"])
    conflict = bnclaims(project, "run", "--executor", "local", "--scheduler", "tcp://127.0.0.1:1")
    assert conflict.returncode == 2 and "--scheduler tcp://127.0.0.1:1 needs --executor dask" in conflict.stderr
