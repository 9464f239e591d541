"""The command line, run as a user runs it: real subprocesses, exit codes, JSON, cache, faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import add, bnclaims, make_project, read_json


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def test_version_and_help(project):
    out = bnclaims(project, "--version")
    assert out.returncode == 0 and out.stdout.startswith("bnclaims ")
    out = bnclaims(project, "--help")
    assert out.returncode == 0
    for command in ("run", "build", "check", "list", "new", "schema"):
        assert command in out.stdout
    out = bnclaims(project, "run", "--help")
    assert "--seed-base" in out.stdout and "--no-cache" in out.stdout


def test_exit_0_when_all_expected_hold(project):
    add(project, "toy-a")
    out = bnclaims(project, "run", "--jobs", "2", "--json", "out.json")
    assert out.returncode == 0, out.stderr
    data = read_json(project / "out.json")
    (claim,) = data["claims"]
    assert {"id", "verdict", "expected", "metrics", "seeds", "seconds", "cached", "error"} <= set(claim)
    assert claim["verdict"] == "supported" and claim["expected"] == "supported"
    assert claim["seeds"] == [0, 1, 2, 3, 4, 5]
    assert claim["cached"] is False and claim["error"] is None
    assert data["invalid"] == []
    assert "1 claims: 1 supported" in out.stdout
    # the verdict as an answer, the scope, the headline conditions with their words and level, beyond
    assert claim["answer"] == "Right" and claim["scope"] == "A toy scope."
    (condition,) = claim["conditions"]
    assert condition["tests"] == "With fluctuating" and condition["level"] == 0.95
    assert claim["beyond"] == []


def test_json_lists_beyond_conditions_apart_from_the_verdict(project):
    path = add(project, "toy-b")
    text = path.read_text().replace("{expected}", "")
    text = text.replace("expected: supported", "  beyond:\n    - name: large\n      holds: mean(x) > 100\n"
                        "expected: supported")
    path.write_text(text)
    out = bnclaims(project, "run", "--jobs", "1", "--json", "out.json")
    assert out.returncode == 0, out.stdout + out.stderr
    (claim,) = read_json(project / "out.json")["claims"]
    assert claim["verdict"] == "supported"
    assert [(b["name"], b["verdict"], b["level"]) for b in claim["beyond"]] == [("large", "refuted", 0.95)]


def test_exit_1_on_mismatch_and_error(project):
    add(project, "toy-mismatch", holds="mean(x) < 0", expected="supported")
    out = bnclaims(project, "run", "--jobs", "1")
    assert out.returncode == 1
    assert "claim toy-mismatch: got refuted, expected supported" in out.stdout
    (project / "claims" / "toy-mismatch.yaml").unlink()
    add(project, "toy-raise", experiment="toy-fault", params="{fault: raise}", holds="mean(x) > 0",
        expected=None)
    out = bnclaims(project, "run", "--json", "out.json")
    assert out.returncode == 1
    (claim,) = read_json(project / "out.json")["claims"]
    assert claim["verdict"] == "error"
    assert "RuntimeError: boom from the experiment" in claim["error"]
    assert "Traceback" not in out.stdout + out.stderr


def test_exit_2_invalid_file_but_valid_claims_still_run(project):
    add(project, "toy-a")
    bad = add(project, "toy-bad")
    bad.write_text(bad.read_text().replace("seeds: 6", "seeds: 6.5"))
    for command in ("check", "run", "build"):
        out = bnclaims(project, command, "--json", "out.json", *(["--out", "site"] if command == "build" else []))
        assert out.returncode == 2, (command, out.stderr)
        line = "claims/toy-bad.yaml:10:8: seeds must be an integer in 1..10000 (found float 6.5)"
        assert line in out.stderr.splitlines(), out.stderr
        assert "Traceback" not in out.stderr
    data = read_json(project / "out.json")
    assert [c["id"] for c in data["claims"]] == ["toy-a"]
    (invalid,) = data["invalid"]
    assert "toy-bad.yaml" in invalid["path"] and invalid["line"] == 10


def test_usage_errors_exit_2(project):
    add(project, "toy-a")
    out = bnclaims(project, "run", "toy-aa")
    assert out.returncode == 2
    assert "no claim with id 'toy-aa'" in out.stderr and "did you mean 'toy-a'" in out.stderr
    assert bnclaims(project, "run", "--jobs", "x").returncode == 2
    assert bnclaims(project, "frobnicate").returncode == 2
    assert bnclaims(project, "run", "--claims", "nowhere").returncode == 2


def test_cache_warm_run_and_explain(project):
    add(project, "toy-a")
    first = bnclaims(project, "run", "--explain", "--json", "a.json")
    assert "toy-a: first run (6 of 6 seeds to run)" in first.stdout
    second = bnclaims(project, "run", "--explain", "--json", "b.json")
    assert "toy-a: all 6 seeds cached" in second.stdout
    a, b = read_json(project / "a.json"), read_json(project / "b.json")
    assert b["claims"][0]["cached"] is True
    for x in (a, b):
        for c in x["claims"]:
            c.pop("cached"), c.pop("seconds"), c.pop("cpu_seconds")
    assert a == b
    path = project / "claims" / "toy-a.yaml"
    path.write_text(path.read_text().replace("{mu: 1.0}", "{mu: 2.0}"))
    third = bnclaims(project, "run", "--explain")
    assert "toy-a: params changed: mu; 6 of 6 seeds to run" in third.stdout
    fourth = bnclaims(project, "run", "--explain", "--no-cache")
    assert "toy-a: --no-cache" in fourth.stdout


def test_same_results_whatever_jobs(project):
    for i in range(3):
        add(project, f"toy-{i}", params=f"{{mu: {i}.5}}", expected=None)
    bnclaims(project, "run", "--jobs", "1", "--json", "one.json", "--no-cache")
    bnclaims(project, "run", "--jobs", "2", "--json", "two.json", "--no-cache")
    one, two = read_json(project / "one.json"), read_json(project / "two.json")
    for x in (one, two):
        for c in x["claims"]:
            c.pop("seconds"), c.pop("cpu_seconds")
    assert one == two


def test_seed_base_gives_disjoint_seeds(project):
    add(project, "toy-a")
    bnclaims(project, "run", "--seed-base", "10000", "--seeds", "3", "--json", "out.json")
    (claim,) = read_json(project / "out.json")["claims"]
    assert claim["seeds"] == [10000, 10001, 10002]


def test_selection_by_k_and_tag(project):
    add(project, "alpha-one", tags="exact")
    add(project, "alpha-two", tags="slow")
    add(project, "beta-one", tags="exact")
    out = bnclaims(project, "run", "-k", "alpha and not two", "--json", "out.json")
    assert [c["id"] for c in read_json(project / "out.json")["claims"]] == ["alpha-one"]
    out = bnclaims(project, "run", "--tag", "exact", "--json", "out.json")
    assert [c["id"] for c in read_json(project / "out.json")["claims"]] == ["alpha-one", "beta-one"]
    out = bnclaims(project, "run", "beta-one", "--json", "out.json")
    assert out.returncode == 0
    assert [c["id"] for c in read_json(project / "out.json")["claims"]] == ["beta-one"]


def test_faults_are_errors_and_others_complete(project):
    add(project, "good", expected="supported")
    add(project, "nan", experiment="toy-fault", params="{fault: nan}", expected=None)
    add(project, "sleepy", experiment="toy-fault", params="{fault: sleep, fault_seed: 1, sleep: 60.0}",
        expected=None)
    add(project, "dies", experiment="toy-fault", params="{fault: exit, fault_seed: 2}", expected=None)
    add(project, "greedy", experiment="toy-fault", params="{fault: memory, fault_seed: 3}", expected=None)
    out = bnclaims(project, "run", "--jobs", "2", "--timeout", "3", "--json", "out.json", timeout=90)
    assert out.returncode == 1, out.stdout + out.stderr
    results = {c["id"]: c for c in read_json(project / "out.json")["claims"]}
    assert results["good"]["verdict"] == "supported"
    assert results["nan"]["error"] == "seed 0: metric 'x' is nan (and 5 more seeds failed)"
    assert "seed 1: timed out after 3 s" in results["sleepy"]["error"]
    assert "seed 2: worker process exited with code 3" in results["dies"]["error"]
    assert results["greedy"]["error"] == "seed 3: out of memory (MemoryError)"


def test_new_scaffold_passes_check(project):
    out = bnclaims(project, "new", "my-new-claim")
    assert out.returncode == 0, out.stderr
    assert (project / "claims" / "my-new-claim.yaml").is_file()
    out = bnclaims(project, "check")
    assert out.returncode == 0, out.stderr
    assert bnclaims(project, "new", "my-new-claim").returncode == 2  # exists
    assert bnclaims(project, "new", "Bad_Id").returncode == 2


def test_list_shows_last_verdict(project):
    add(project, "toy-a")
    out = bnclaims(project, "list")
    assert "toy-a" in out.stdout and "not run" in out.stdout
    bnclaims(project, "run")
    out = bnclaims(project, "list")
    assert "supported" in out.stdout and "000_9d0fa3abc03cef76" in out.stdout


def test_schema_command(project):
    out = bnclaims(project, "schema")
    assert out.returncode == 0
    assert json.loads(out.stdout)["title"] == "bnclaims claim file"



def test_identical_jobs_of_two_claims_run_once(project):
    """Two claims with the same experiment, params and seeds share one job per seed."""
    import toy_experiments  # noqa: F401
    from bnclaims.claims import load_claims
    from bnclaims.executor import Outcome
    from bnclaims.runner import RunOptions, run_claims
    from bnclaims.worker import run_job

    add(project, "twin-a")
    add(project, "twin-b", holds="mean(x) > -1")
    claims, problems = load_claims([project / "claims"])
    assert not problems

    class Counting:
        def __init__(self):
            self.jobs = []

        def run(self, jobs, on_done):
            for job in jobs:
                self.jobs.append(job)
                status, payload, seconds = run_job(job.experiment, job.seed, job.params, ())
                on_done(job, Outcome(status, payload, seconds))

    executor = Counting()
    results = run_claims(claims, RunOptions(cache_dir=project / "cache"), executor=executor, progress=False)
    assert len(executor.jobs) == 6
    assert [r.status for r in results] == ["supported", "supported"]
    assert results[0].runs == results[1].runs
