"""A claim's ladder: the same rule at other scales (`ladder:` rungs, `run --ladder`, the site's table)."""

from __future__ import annotations

import json

import pytest

from helpers import add, bnclaims, make_project, read_json

LADDER = """\
ladder:
  - name: shifted
    params: {mu: -1.0}
    seeds: 4
    note: the mean moved below zero
  - name: wide
    params: {sd: 3.0}
"""


@pytest.fixture
def project(tmp_path):
    root = make_project(tmp_path / "p")
    path = add(root, "laddered", params="{mu: 1.0, sd: 0.1}")
    path.write_text(path.read_text() + LADDER)
    return root


def test_plain_run_skips_the_rungs_and_ladder_runs_them(project):
    plain = bnclaims(project, "run", "--jobs", "1", "--json", "plain.json", "--cache-dir", "c")
    assert plain.returncode == 0, plain.stderr
    assert "@shifted" not in plain.stdout
    assert "not run" not in plain.stdout
    plain_rungs = read_json(project / "plain.json")["claims"][0]["ladder"]
    assert [(r["name"], r["verdict"]) for r in plain_rungs] == [("shifted", "not run"), ("wide", "not run")]

    laddered = bnclaims(project, "run", "--jobs", "1", "--ladder", "--json", "l.json", "--cache-dir", "c")
    assert laddered.returncode == 0, laddered.stderr
    assert "@shifted" in laddered.stdout and "@wide" in laddered.stdout
    claim = read_json(project / "l.json")["claims"][0]
    assert claim["verdict"] == "supported"  # the base rung's verdict, whatever the rungs say
    rungs = {r["name"]: r for r in claim["ladder"]}
    assert rungs["shifted"]["verdict"] == "refuted" and rungs["shifted"]["seeds"] == [0, 1, 2, 3]
    assert rungs["shifted"]["params"] == {"mu": -1.0} and rungs["shifted"]["note"] == "the mean moved below zero"
    assert rungs["wide"]["seeds"] == list(range(6))
    assert rungs["wide"]["cpu_seconds"] >= 0 and rungs["wide"]["cached"] is False
    assert rungs["shifted"]["conditions"][0]["estimate"] < 0 < claim["conditions"][0]["estimate"]


def test_build_shows_stored_rungs_without_running_them(project):
    assert bnclaims(project, "run", "--jobs", "1", "--ladder", "--cache-dir", "c").returncode == 0
    built = bnclaims(project, "build", "--jobs", "1", "--out", "site", "--cache-dir", "c2")  # an empty cache
    assert built.returncode == 0, built.stderr
    page = (project / "site" / "claims" / "laddered.html").read_text()
    assert "At other scales" in page and "not run yet" in page  # c2 has no rung seeds, and build does not run them

    rebuilt = bnclaims(project, "build", "--jobs", "1", "--out", "site", "--cache-dir", "c")
    assert rebuilt.returncode == 0, rebuilt.stderr
    page = (project / "site" / "claims" / "laddered.html").read_text()
    assert "not run yet" not in page and "shifted" in page and "mu: -1.0" in page
    assert (project / "site" / "results" / "laddered@shifted.json").is_file()
    manifest = json.loads((project / "site" / "manifest.json").read_text())
    assert manifest["ladder"]["laddered@shifted"]["verdict"] == "refuted"

    # a fresh clone: no cache at all, the rungs come from the site's results
    again = bnclaims(project, "build", "--jobs", "1", "--out", "site", "--cache-dir", "c3")
    assert again.returncode == 0 and "not run yet" not in (project / "site" / "claims" / "laddered.html").read_text()


def test_a_rung_that_errors_fails_a_ladder_run_only(project):
    path = add(project, "faulty", experiment="toy-fault", params="{fault: none}", holds="mean(x) > 0")
    path.write_text(path.read_text() + "ladder:\n  - name: broken\n    params: {fault: raise}\n")
    assert bnclaims(project, "run", "--jobs", "1", "-k", "faulty", "--cache-dir", "c").returncode == 0
    failed = bnclaims(project, "run", "--jobs", "1", "-k", "faulty", "--ladder", "--cache-dir", "c")
    assert failed.returncode == 1 and "@broken" in failed.stdout


@pytest.mark.parametrize("ladder, message", [
    ("  - name: a\n    params: {mu: bad}\n", "14:1: parameter 'mu' must be float"),
    ("  - name: a\n    params: {mux: 1}\n", "unknown parameter for experiment 'toy-normal' (found 'mux'"),
    ("  - name: a\n    params: {mu: 1.0}\n", "rung 'a' changes nothing"),
    ("  - name: a\n    params: {sd: 2.0}\n  - name: a\n    params: {sd: 3.0}\n", "rung name used twice"),
    ("  - name: Big\n    params: {sd: 2.0}\n", "ladder[0].name must match"),
    ("  - name: a\n    params: {sd: 2.0}\n    seed: 3\n", "unknown key in ladder[0] (found 'seed'; did you mean 'seeds'"),
])
def test_bad_rungs_are_one_line_errors_with_position(tmp_path, ladder, message):
    root = make_project(tmp_path / "p")
    path = add(root, "bad", params="{mu: 1.0}")
    path.write_text(path.read_text() + "ladder:\n" + ladder)
    checked = bnclaims(root, "check")
    assert checked.returncode == 2
    assert message.split(":", 2)[-1].strip() in checked.stderr or message in checked.stderr, checked.stderr
    assert "bad.yaml:" in checked.stderr and "Traceback" not in checked.stderr
