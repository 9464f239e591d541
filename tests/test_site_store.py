"""The site keeps the seed runs it was built from: a fresh clone's build reuses them, runs no seed and
changes no byte; ``--no-cache`` recomputes. Pages hold no volatile facts (compute times, counts)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from helpers import add, bnclaims, make_project


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_fresh_clone_rebuilds_the_committed_site_from_its_results_without_running(tmp_path):
    project = make_project(tmp_path / "a")
    add(project, "toy-a")
    add(project, "toy-b", params="{mu: 2.0}")
    first = bnclaims(project, "build", "--out", "site", "--jobs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    built = digest_tree(project / "site")
    stored = json.loads((project / "site" / "results" / "toy-a.json").read_text())
    assert [run["seed"] for run in stored["runs"]] == list(range(6))
    assert stored["runs"][0]["blas"] and stored["runs"][0]["versions"]["numpy"]

    clone = tmp_path / "clone"  # what git would give: the claims and the committed site, no cache
    shutil.copytree(project / "claims", clone / "claims")
    shutil.copytree(project / "site", clone / "site")
    again = bnclaims(clone, "build", "--out", "site", "--jobs", "1", "--explain")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "6 of 6 seeds from the results the site was built from" in again.stdout
    assert "to run" not in again.stdout
    assert digest_tree(clone / "site") == built  # not a byte changed

    recomputed = bnclaims(clone, "build", "--out", "site", "--jobs", "1", "--no-cache", "--explain")
    assert recomputed.returncode == 0, recomputed.stdout + recomputed.stderr
    assert "--no-cache" in recomputed.stdout and "from the results the site" not in recomputed.stdout


def test_pages_hold_no_compute_times_or_counts(tmp_path):
    project = make_project(tmp_path)
    add(project, "toy-a")
    out = bnclaims(project, "build", "--out", "site", "--jobs", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    for page in (project / "site").rglob("*.html"):
        text = page.read_text()
        assert "Compute time" not in text, page
        assert " claims." not in text.split('<footer class="site">')[-1], page
    manifest = json.loads((project / "site" / "manifest.json").read_text())["claims"]["toy-a"]
    assert set(manifest) == {"input_hash", "verdict", "seconds", "cpu_seconds"}
    page = (project / "site" / "claims" / "toy-a.html").read_text()
    assert "Computed with" in page and "BLAS" in page
