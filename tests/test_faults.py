"""Faults: experiments that fail in every way, workers that die, runs killed with SIGKILL at any
moment, writes cut off half-way, concurrent builds, and determinism across ``--jobs``.

Real subprocesses throughout; the toy experiments live in tests/fixtures.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import add, bnclaims, env_for_toys, make_project, read_json

SLOW = "toy_experiments,toy_slow"
TIMING = ("seconds", "cpu_seconds", "cached")


def without_timing(data: dict) -> dict:
    return {**data, "claims": [{k: v for k, v in c.items() if k not in TIMING} for c in data["claims"]]}


# --------------------------------------------------------------------------- experiment faults

def test_every_fault_is_an_error_with_its_reason_and_the_rest_complete(tmp_path):
    project = make_project(tmp_path)
    add(project, "good", seeds=4)
    add(project, "slow-for-its-timeout", experiment="toy-fault", params="{fault: sleep, fault_seed: 1, sleep: 60.0}",
        expected=None, seeds=4)
    path = project / "claims" / "slow-for-its-timeout.yaml"
    path.write_text(path.read_text().replace("seeds: 4\n", "seeds: 4\ntimeout: 2\n"))  # the claim's own limit
    add(project, "infinite", experiment="toy-slow", params="{mu: .inf, sleep: 0.0}", expected=None, seeds=4)
    add(project, "killed", experiment="toy-signal", params="{kill_seed: 2}", expected=None, seeds=4)
    add(project, "raises", experiment="toy-fault", params="{fault: raise, fault_seed: 3}", expected=None, seeds=4)
    out = bnclaims(project, "run", "--jobs", "2", "--cache-dir", "cache", "--json", "out.json", modules=SLOW)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    results = {c["id"]: c for c in read_json(project / "out.json")["claims"]}
    assert results["good"]["verdict"] == "supported"
    assert results["slow-for-its-timeout"]["error"].startswith("seed 1: timed out after 2 s")
    assert results["infinite"]["error"] == "seed 0: metric 'x' is inf (and 3 more seeds failed)"
    assert results["killed"]["error"] == "seed 2: worker process was killed by SIGKILL"
    assert results["raises"]["error"].startswith("seed 3: RuntimeError: boom from the experiment at toy_experiments.py:")
    for r in results.values():
        assert r["error"] is None or "\n" not in r["error"]
    # the seeds that did finish are cached: the next run only re-tries the failed ones
    again = bnclaims(project, "run", "good", "killed", "--explain", "--cache-dir", "cache", modules=SLOW)
    assert "good: all 4 seeds cached" in again.stdout
    assert "killed: 1 of 4 seeds to run" in again.stdout


def test_a_worker_that_dies_while_starting_fails_the_jobs_instead_of_respawning_forever(tmp_path):
    project = make_project(tmp_path)
    add(project, "toy-a", seeds=5)
    out = bnclaims(project, "run", "--jobs", "2", "--no-cache", "--cache-dir", "cache", "--json", "out.json",
                   modules="toy_experiments,toy_worker_killer", timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    (claim,) = read_json(project / "out.json")["claims"]
    assert claim["error"].startswith("worker could not start: worker process exited with code 7 before it was ready")


def test_a_worker_that_cannot_start_says_why_in_one_line(tmp_path):
    project = make_project(tmp_path)
    add(project, "toy-a", seeds=3)
    # 30 MiB of address space is too little to import numpy: the import error is the reason
    out = bnclaims(project, "run", "--memory-limit", "30", "--no-cache", "--cache-dir", "cache", "--json", "out.json",
                   timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    (claim,) = read_json(project / "out.json")["claims"]
    assert claim["error"].startswith("worker could not start: ")
    assert "\n" not in claim["error"] and len(claim["error"]) < 400


# --------------------------------------------------------------------------- kill -9 and cut-off writes

def cache_state(cache: Path) -> tuple[int, int]:
    """(complete entries, leftover temp files); fails on any entry that is not whole."""
    complete = temps = 0
    for path in cache.rglob("*"):
        if path.is_dir():
            continue
        if path.name.endswith(".tmp"):
            temps += 1
            continue
        data = json.loads(path.read_bytes())  # a half-written entry raises here
        if path.parent.parent.name == "runs":
            assert data["key"] == path.stem, path
            complete += 1
    return complete, temps


def start(project: Path, *args: str, modules: str = SLOW) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bnclaims", *args], cwd=project, env=env_for_toys(modules),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the run and its workers, as `kill -9 -PGID` would
    except ProcessLookupError:
        pass
    process.wait()


def runs_in(cache: Path) -> int:
    return sum(1 for p in (cache / "runs").rglob("*.json")) if (cache / "runs").is_dir() else 0


def test_kill_9_at_any_moment_then_the_next_run_gives_the_same_verdicts(tmp_path):
    project = make_project(tmp_path)
    for name, mu in (("slow-a", 1.5), ("slow-b", -1.5), ("slow-c", 0.0)):
        add(project, name, experiment="toy-slow", params=f"{{mu: {mu}, sleep: 0.1}}", expected=None, seeds=6)
    reference = bnclaims(project, "run", "--jobs", "2", "--cache-dir", "reference", "--json", "reference.json",
                         modules=SLOW)
    assert reference.returncode == 0, reference.stderr
    expected = without_timing(read_json(project / "reference.json"))
    assert {c["verdict"] for c in expected["claims"]} >= {"supported", "refuted"}

    # one cache, killed again and again: while starting up, after the next result, half-way through
    cache = project / "cache"
    for moment in (0, 1, 9):
        process = start(project, "run", "--jobs", "2", "--cache-dir", str(cache), "--json", "killed.json")
        deadline = time.monotonic() + 60
        while runs_in(cache) < moment and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if moment == 0:
            time.sleep(0.8)  # importing, spawning workers
        assert process.poll() is None, f"the run finished before the kill at {moment}"
        kill_group(process)
        complete, _ = cache_state(cache)  # every entry left behind is whole (temp files may remain)
        assert complete < 18
    rerun = bnclaims(project, "run", "--jobs", "2", "--cache-dir", str(cache), "--json", "rerun.json", modules=SLOW)
    assert rerun.returncode == 0, rerun.stderr
    assert without_timing(read_json(project / "rerun.json")) == expected
    assert not (project / "killed.json").exists()  # --json is written whole or not at all
    assert cache_state(cache)[0] == 18


CUT_OFF_WRITER = textwrap.dedent("""\
    import resource, signal, sys
    from pathlib import Path
    from bnclaims.cache import Cache

    cache = Cache(Path(sys.argv[1]))
    key = "ab" * 32
    cache.put_run(key, {"metrics": {"x": 1.0}, "series": {}, "seconds": 0.1})  # the old entry
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel kills us mid-write instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
    cache.put_run(key, {"metrics": {"x": 2.0}, "series": {"s": [0.5] * 100000}, "seconds": 0.1})
    print("not reached")
""")


def test_a_process_killed_in_the_middle_of_a_cache_write_leaves_the_old_entry(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(CUT_OFF_WRITER)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")], env=env_for_toys(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGXFSZ, out  # killed while writing the second entry
    from bnclaims.cache import Cache

    cache = Cache(tmp_path / "cache")
    entry = cache.get_run("ab" * 32)
    assert entry is not None and entry["metrics"] == {"x": 1.0}  # the old entry, whole
    complete, temps = cache_state(tmp_path / "cache")
    assert complete == 1 and temps <= 1  # at most the cut-off temp file, which nothing reads


def test_a_build_cut_off_while_writing_the_site_leaves_the_previous_site(tmp_path):
    project = make_project(tmp_path)
    add(project, "toy-a", seeds=3)
    add(project, "toy-b", seeds=3, params="{mu: 2.0}")
    first = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site")
    assert first.returncode == 0, first.stderr
    before = {str(p.relative_to(project / "site")): p.read_bytes() for p in (project / "site").rglob("*") if p.is_file()}
    # a bigger claim, then a build whose process is killed (SIGXFSZ) when a page outgrows the size limit
    path = add(project, "toy-b", seeds=3, params="{mu: 2.0}")
    path.write_text(path.read_text().replace("explanation: A toy.", "explanation: " + "A long explanation. " * 3000))

    def limit():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (48_000, resource.RLIM_INFINITY))

    # Python starts with SIGXFSZ ignored (a write then fails with EFBIG); restore the kernel's kill
    killable = "import signal, runpy; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); runpy.run_module('bnclaims', run_name='__main__')"
    second = subprocess.run([sys.executable, "-c", killable, "build", "--jobs", "1", "--cache-dir", "cache",
                             "--out", "site"], cwd=project, env=env_for_toys(), capture_output=True, text=True,
                            timeout=120, preexec_fn=limit)
    assert second.returncode == -signal.SIGXFSZ, second.stderr
    assert list(project.glob(".site.new-*")), "killed while writing the new site beside the old one"
    after = {str(p.relative_to(project / "site")): p.read_bytes() for p in (project / "site").rglob("*") if p.is_file()}
    assert after == before  # the old site, whole; the half-written new one is beside it, not in it
    third = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site")
    assert third.returncode == 0, third.stderr
    assert b"A long explanation." in (project / "site" / "claims" / "toy-b.html").read_bytes()
    assert not list(project.glob(".site.new-*")), "the next build clears what a killed one left"


# --------------------------------------------------------------------------- concurrency and determinism



def site_files(site: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def check_complete(site: Path, claim_ids: list[str]) -> None:
    """Every page is there and every relative link from the index resolves."""
    files = site_files(site)
    assert {"index.html", "about.html", "style.css"} <= set(files)
    for claim_id in claim_ids:
        assert f"claims/{claim_id}.html" in files
    index = files["index.html"].decode()
    links = set(re.findall(r'href="([^"#:?]+)', index))
    assert links, "the index links nothing"
    for link in links:
        assert (site / link).is_file(), f"index links {link}, which is missing"
    for name, data in files.items():
        if name.endswith(".html"):
            assert data.rstrip().endswith(b"</html>"), f"{name} is cut off"


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("determinism"))
    for i in range(3):
        add(project, f"toy-{i}", params=f"{{mu: {i - 1}.5}}", expected=None, seeds=5)
    add(project, "toy-y", holds="mean(y) > -5", expected=None, seeds=7)
    return project


def test_same_results_and_site_whatever_jobs(toy_project):
    project = toy_project
    one = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache-1", "--out", "site-1", "--json", "one.json")
    two = bnclaims(project, "build", "--jobs", "2", "--cache-dir", "cache-2", "--out", "site-2", "--json", "two.json")
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    assert without_timing(read_json(project / "one.json")) == without_timing(read_json(project / "two.json"))
    a, b = site_files(project / "site-1"), site_files(project / "site-2")
    assert a.keys() == b.keys()
    # cold runs differ only in measured times, which no page shows: the manifest and the stored runs keep them
    differ = sorted(name for name in a if a[name] != b[name])
    assert all(name == "manifest.json" or name.startswith("results/") for name in differ), differ

    def untimed(data):
        if isinstance(data, dict):
            return {k: untimed(v) for k, v in data.items() if k not in ("seconds", "cpu_seconds")}
        return [untimed(v) for v in data] if isinstance(data, list) else data

    assert all(untimed(json.loads(a[n])) == untimed(json.loads(b[n])) for n in differ), differ
    # the cache entries themselves are identical whatever --jobs, except their measured times
    def entries(cache):
        return {p.name: {k: v for k, v in json.loads(p.read_bytes()).items() if k not in ("seconds", "cpu_seconds")}
                for p in (project / cache / "runs").rglob("*.json")}
    assert entries("cache-1") == entries("cache-2")


def test_two_builds_from_the_same_cache_are_byte_identical_even_at_once(toy_project):
    project = toy_project
    warm = bnclaims(project, "build", "--jobs", "2", "--cache-dir", "cache-1", "--out", "site-warm")
    assert warm.returncode == 0, warm.stderr
    reference = site_files(project / "site-warm")
    ids = ["toy-0", "toy-1", "toy-2", "toy-y"]
    check_complete(project / "site-warm", ids)

    # three builds at once into one directory (they take turns on a lock; each swaps in a whole site)
    builds = [start(project, "build", "--jobs", "2", "--cache-dir", "cache-1", "--out", "site-shared",
                    modules="toy_experiments") for _ in range(3)]
    codes = [p.wait(timeout=120) for p in builds]
    assert codes == [0, 0, 0]
    assert site_files(project / "site-shared") == reference  # whole, not mixed, and byte-identical
    assert not list(project.glob(".site-shared.new-*")) and not list(project.glob(".site-shared.old-*"))
