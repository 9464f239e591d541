"""Processes and signals (issue 17, items 13-15): SIGTERM ends a run as Ctrl-C does, Ctrl-C prints one
line, no worker or grandchild outlives the run, a worker reused for the next job starts from clean
global state, and what experiments print is captured instead of reaching the table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import add, env_for_toys, make_project

EXPERIMENTS = '''
import os, sys, time
import numpy as np
from bnclaims.experiments import experiment


@experiment("proc-fork", metrics={"x": "1"})
def proc_fork(rng: np.random.Generator, *, leave: bool = True) -> dict:
    if os.fork() == 0:  # a grandchild that outlives the experiment (and keeps the worker's pipes open)
        time.sleep(120)
        os._exit(0)
    if not leave:
        os._exit(0)  # the worker itself exits while its child lives on
    return {"x": 1.0}


@experiment("proc-poison", metrics={"x": "1"})
def proc_poison(rng: np.random.Generator, *, chatty: int = 0) -> dict:
    np.seterr(all="raise")
    np.set_printoptions(precision=1)
    for i in range(chatty):
        print("CHATTY LINE", i)
    return {"x": 1.0}


@experiment("proc-divide", metrics={"x": "1"})
def proc_divide(rng: np.random.Generator, *, fail: bool = False) -> dict:
    with np.errstate(divide="ignore"):
        pass
    value = np.float64(1.0) / np.float64(0.0)  # a warning, unless a previous job left errors raising
    if fail:
        print("about to fail: the detail is here")
        raise ValueError("failed on purpose")
    return {"x": 1.0 if np.isinf(value) and repr(np.array([0.123456])) == "array([0.123456])" else -1.0}


@experiment("proc-slow", metrics={"x": "1"})
def proc_slow(rng: np.random.Generator, *, sleep: float = 1.0) -> dict:
    time.sleep(sleep)
    return {"x": 1.0}
'''



@pytest.fixture
def project(tmp_path):
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "proc_experiments.py").write_text(EXPERIMENTS)
    return make_project(tmp_path / "project")


def environment(project: Path, token: str) -> dict:
    env = env_for_toys("toy_experiments,proc_experiments")
    env["PYTHONPATH"] = os.pathsep.join([str(project.parent / "modules"), env["PYTHONPATH"]])
    env["BNCLAIMS_TEST_TOKEN"] = token  # inherited by every process the run starts: found in /proc after
    return env


def start(project: Path, *args: str, token: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bnclaims", *args], cwd=project, env=environment(project, token),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run(project: Path, *args: str, token: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnclaims", *args], cwd=project, env=environment(project, token),
                          capture_output=True, text=True, timeout=timeout)


def alive_with(token: str) -> list[int]:
    found = []
    needle = f"BNCLAIMS_TEST_TOKEN={token}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        with open(f"/proc/{entry}/stat") as g:
                            if g.read().rpartition(")")[2].split()[0] != "Z":
                                found.append(int(entry))
            except OSError:
                pass
    return found


def none_left(token: str, grace: float = 5.0) -> list[int]:
    deadline = time.monotonic() + grace
    while alive_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive_with(token)
    for pid in left:  # do not leave them to the next test either
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def cached_runs(project: Path) -> int:
    runs = project / "cache" / "runs"
    return sum(1 for _ in runs.rglob("*.json")) if runs.is_dir() else 0


def wait_for_cached(project: Path, process: subprocess.Popen, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while cached_runs(project) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no seed finished"
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_ends_the_run_like_ctrl_c_and_leaves_no_process(project):
    add(project, "slow-a", experiment="proc-slow", params="{sleep: 0.5}", seeds=40, expected=None)
    token = uuid.uuid4().hex
    process = start(project, "run", "--jobs", "2", "--cache-dir", "cache", token=token)
    wait_for_cached(project, process)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)  # to the run only, as `kill PID` or a CI timeout does
    out, err = process.communicate(timeout=30)  # returns only when nothing holds stdout/stderr open
    assert process.returncode == 143, err
    assert time.monotonic() - started < 10
    assert err.splitlines() == ["bnclaims: terminated; finished seeds are cached"], err
    assert none_left(token) == []
    assert cached_runs(project) >= 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_to_the_process_group_prints_one_line(project):
    add(project, "slow-a", experiment="proc-slow", params="{sleep: 0.5}", seeds=40, expected=None)
    token = uuid.uuid4().hex
    # a foreground job's Ctrl-C: SIGINT at its default in the run, even when this test runs where SIGINT
    # is ignored (a background job of a script: `pytest &` ignores it, and children inherit that)
    process = start(project, "run", "--jobs", "2", "--cache-dir", "cache", token=token, start_new_session=True,
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_cached(project, process)
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: every process in the group
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert err.splitlines() == ["bnclaims: interrupted; finished seeds are cached"], err
    assert none_left(token) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_forked_child_that_outlives_its_experiment_is_killed_and_an_exit_is_an_exit(project):
    add(project, "fork-leave", experiment="proc-fork", params="{leave: true}", seeds=2, expected=None)
    path = add(project, "fork-exit", experiment="proc-fork", params="{leave: false}", seeds=1, expected=None)
    path.write_text(path.read_text() + "timeout: 60\n")
    token = uuid.uuid4().hex
    started = time.monotonic()
    result = run(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", "r.json", token=token)
    assert time.monotonic() - started < 40, "waited for the grandchild or the timeout"
    claims = {c["id"]: c for c in json.loads((project / "r.json").read_text())["claims"]}
    assert claims["fork-leave"]["verdict"] == "supported", claims["fork-leave"]
    assert "exited with code 0" in claims["fork-exit"]["error"], claims["fork-exit"]["error"]
    assert "timed out" not in claims["fork-exit"]["error"]
    assert none_left(token, grace=2.0) == []
    assert result.returncode == 1


def test_a_reused_worker_starts_each_job_from_clean_global_state(project):
    add(project, "a-poison", experiment="proc-poison", params="{}", seeds=2)
    add(project, "b-divide", experiment="proc-divide", params="{}", seeds=2)
    result = run(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", "r.json", token="none")
    claims = {c["id"]: c for c in json.loads((project / "r.json").read_text())["claims"]}
    assert claims["b-divide"]["verdict"] == "supported", claims["b-divide"]["error"]
    assert result.returncode == 0, result.stdout + result.stderr


def test_what_experiments_print_is_captured_and_shown_with_debug_or_on_error(project):
    add(project, "a-chatty", experiment="proc-poison", params="{chatty: 20000}", seeds=2)
    add(project, "b-fails", experiment="proc-divide", params="{fail: true}", seeds=1, expected=None)
    quiet = run(project, "run", "--jobs", "1", "--no-cache", "--json", "r.json", token="none")
    assert "CHATTY" not in quiet.stdout + quiet.stderr
    assert len(quiet.stdout) < 5000
    failed = {c["id"]: c for c in json.loads((project / "r.json").read_text())["claims"]}["b-fails"]
    assert "failed on purpose" in failed["error"] and "about to fail: the detail is here" in failed["error"]
    debug = run(project, "run", "--jobs", "1", "--no-cache", "--debug", "-k", "chatty", token="none")
    assert "CHATTY LINE 19999" in debug.stderr and "CHATTY" not in debug.stdout
