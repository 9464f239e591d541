"""Shared by the subprocess tests: a temp project with the real threads, toy claim files,
and ``bnclaims`` (or pytest) run as a user runs it, with its wall time and peak memory."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
THREADS = ROOT / "claims" / "threads"
QUOTE = "With fluctuating beta and gamma, the distribution also fluctuates."

# Line numbers matter: tests check file:line:col against this layout.
CLAIM = """\
id: {id}
title: Toy claim {id}
claim: x is positive on average
source:
  thread: 000_9d0fa3abc03cef76
  quote: "With fluctuating beta and gamma, the distribution also fluctuates."
tags: [{tags}]
experiment: {experiment}
params: {params}
seeds: {seeds}
rule:
  conditions:
    - name: positive
      holds: {holds}
      tests: "With fluctuating"
{expected}explanation: A toy.
scope: A toy scope.
"""


def claim_text(id, *, experiment="toy-normal", params="{mu: 1.0}", seeds=6, holds="mean(x) > 0",
               expected="supported", tags="toy"):
    return CLAIM.format(id=id, experiment=experiment, params=params, seeds=seeds, holds=holds, tags=tags,
                        expected=f"expected: {expected}\n" if expected else "")


def make_project(root: Path) -> Path:
    """``root/claims`` with the five real threads under ``claims/threads`` (not their sentence maps and
    answers, which name the real claims)."""
    (root / "claims").mkdir(parents=True)
    shutil.copytree(THREADS, root / "claims" / "threads", ignore=shutil.ignore_patterns("*.map.yaml", "*.answer.yaml"))
    return root


def add(project: Path, id: str, **kw) -> Path:
    path = project / "claims" / f"{id}.yaml"
    path.write_text(claim_text(id, **kw), encoding="utf-8")
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def env_for_toys(modules: str = "toy_experiments") -> dict:
    """The environment of a user who has the toy experiments installed (tests/fixtures importable)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), str(ROOT), env.get("PYTHONPATH", "")])
    env["BNCLAIMS_EXPERIMENTS"] = modules
    env.pop("XDG_CACHE_HOME", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing but the tool itself writes files
    return env


def bnclaims(project: Path, *args: str, timeout: float = 120, modules: str = "toy_experiments",
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnclaims", *args], cwd=project, env=env_for_toys(modules),
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mib: float  # peak resident memory of the process or of its largest descendant


def measured_at_once(commands: list[list[str]], cwd: Path, *, timeout: float = 60,
                     address_space_mib: int | None = None) -> list[Measured]:
    """Run ``commands`` together; measure each one's wall time and peak memory (``wait4`` rusage of that
    child and its descendants, so other processes on the machine do not count).

    ``address_space_mib`` caps each child's address space (soft limit only, so worker processes may
    still set their own); a run that would blow up memory then fails instead of taking the machine."""

    def limit():
        if address_space_mib:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (address_space_mib << 20, hard))

    start = time.perf_counter()
    files = [(tempfile.TemporaryFile(), tempfile.TemporaryFile()) for _ in commands]
    processes = [subprocess.Popen(args, cwd=cwd, env=env_for_toys(), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                  preexec_fn=limit, start_new_session=True) for args, (out, err) in zip(commands, files)]
    done: dict[int, tuple[int, float, float]] = {}  # index -> (exit code, seconds, peak MiB)
    try:
        while len(done) < len(processes):
            for i, process in enumerate(processes):
                if i in done:
                    continue
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    process.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
                    done[i] = (process.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024)
            if time.perf_counter() - start > timeout:
                slow = [" ".join(commands[i]) for i in range(len(processes)) if i not in done]
                raise AssertionError(f"still running after {timeout} s: {slow}")
            time.sleep(0.02)
    finally:
        for i, process in enumerate(processes):
            if i not in done:
                os.killpg(process.pid, 9)
                process.wait()
    results = []
    for i, (out, err) in enumerate(files):
        out.seek(0), err.seek(0)
        code, seconds, rss = done[i]
        results.append(Measured(code, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                                seconds, rss))
        out.close(), err.close()
    return results


def bnclaims_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnclaims", *args]


def pytest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:benchmark", *args]
