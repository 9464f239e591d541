"""A run whose stderr is not a terminal (CI, a log) prints a plain heartbeat, never a silent wait."""

from __future__ import annotations

from helpers import add, bnclaims, make_project


def test_a_piped_run_prints_plain_heartbeat_lines(tmp_path):
    project = make_project(tmp_path)
    add(project, "toy-a")
    add(project, "toy-b", params="{mu: 2.0}")
    out = bnclaims(project, "run", "--jobs", "1")  # stderr is a pipe here
    assert out.returncode == 0, out.stdout + out.stderr
    beats = [line for line in out.stderr.splitlines() if line.startswith("bnclaims: ")]
    assert beats, out.stderr
    assert beats[-1].startswith("bnclaims: 2/2 claims done, 12/12 seeds run, ")
    assert "\r" not in out.stderr and "\033" not in out.stderr  # no terminal control codes in a log
    quiet = bnclaims(project, "run", "--jobs", "1", "--quiet", "--no-cache")
    assert not [line for line in quiet.stderr.splitlines() if "seeds run" in line]


def test_explain_after_an_interrupted_run_counts_the_cached_seeds(tmp_path):
    import shutil

    project = make_project(tmp_path)
    add(project, "toy-a")
    first = bnclaims(project, "run", "--jobs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    cache = project / ".bnclaims-cache"
    shutil.rmtree(cache / "claims")  # as after a kill: seeds stored, the claim never finished
    runs = sorted((cache / "runs").rglob("*.json"))
    for path in runs[:2]:
        path.unlink()
    again = bnclaims(project, "run", "--jobs", "1", "--explain")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 of 6 seeds cached by an earlier run that did not finish; 2 to run" in again.stdout
    assert "first run" not in again.stdout
