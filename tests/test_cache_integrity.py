"""The cache never lies and never stops a run (issue 17, items 6, 8, 9), and a claim file linked from
outside the claims directory is never read (item 3)."""

from __future__ import annotations

import errno
import importlib
import json
import sys
from pathlib import Path

import pytest

from bnclaims import cache as cache_module
from bnclaims.cache import Cache, code_hashes
from helpers import add, bnclaims, make_project



# --------------------------------------------------------------------------- 6: the user's import closure

def test_an_external_experiments_module_is_hashed_with_the_helpers_it_imports(tmp_path, monkeypatch):
    package = tmp_path / "userexp17"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (package / "lazy.py").write_text("K = 1\n")
    (package / "experiments.py").write_text(
        "import numpy as np\nfrom bnclaims.experiments import experiment\nfrom userexp17.helpers import double\n"
        "from . import lazy\nimport bnclaims.nn\n\n"
        "@experiment('userexp17-double', metrics={'x': 'twice a draw'})\n"
        "def double_draw(rng: np.random.Generator, *, scale: float = 1.0) -> dict:\n"
        "    return {'x': double(rng.normal(scale, 1.0))}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("userexp17.experiments")
    try:
        hashes = code_hashes("userexp17.experiments")
        assert {"userexp17.experiments", "userexp17.helpers", "userexp17.lazy", "nn.py"} <= set(hashes), hashes
        assert not any(k.startswith("numpy") for k in hashes)
        before = hashes["userexp17.helpers"]
        (package / "helpers.py").write_text("def double(x):\n    return 3 * x\n")
        cache_module._external_hashes.cache_clear()
        cache_module.file_hash.cache_clear()
        assert code_hashes("userexp17.experiments")["userexp17.helpers"] != before
    finally:
        from bnclaims import experiments

        experiments._REGISTRY.pop("userexp17-double", None)
        for name in [m for m in sys.modules if m.startswith("userexp17")]:
            del sys.modules[name]


# --------------------------------------------------------------------------- 8: an unwritable cache

def test_a_cache_that_cannot_be_written_warns_once_and_the_run_goes_on(tmp_path, monkeypatch):
    warnings = []
    cache = Cache(tmp_path / "cache", warn=warnings.append)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "atomic_write", full)
    for i in range(3):
        cache.put_run(f"{i:064x}", {"metrics": {}, "series": {}, "seconds": 0.0})
        cache.put_claim("a", {"verdict": "supported"})
    assert len(warnings) == 1 and str(tmp_path / "cache") in warnings[0] and "No space left" in warnings[0]


def test_a_cache_dir_that_is_a_file_still_gives_the_table_json_and_site(tmp_path):
    project = make_project(tmp_path / "project")
    add(project, "toy-a", seeds=3)
    (project / "notadir").write_text("a file\n")
    result = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "notadir", "--out", "site", "--json", "r.json")
    assert result.returncode == 0, result.stderr
    assert "toy-a" in result.stdout and "1 claims: 1 supported" in result.stdout
    assert result.stderr.count("warning: cannot write the cache in notadir") == 1, result.stderr
    assert json.loads((project / "r.json").read_text())["claims"][0]["verdict"] == "supported"
    assert (project / "site" / "index.html").is_file()
    assert (project / "notadir").read_text() == "a file\n"


# --------------------------------------------------------------------------- 9: valid JSON, wrong content

KEY = "ab" * 32
GOOD = {"key": KEY, "metrics": {"x": 1.0}, "series": {"curve": [1.0, None]}, "seconds": 0.1, "cpu_seconds": 0.1}


@pytest.mark.parametrize("entry", [
    {**GOOD, "metrics": [1.0]},
    {**GOOD, "metrics": {"x": "1.0"}},
    {**GOOD, "metrics": {"x": float("nan")}},
    {**GOOD, "metrics": {"x": True}},
    {k: v for k, v in GOOD.items() if k != "series"},
    {k: v for k, v in GOOD.items() if k != "seconds"},
    {**GOOD, "series": {"curve": "1,2"}},
    {**GOOD, "metrics": {"y": 1.0}},  # not the experiment's metric
    [GOOD],
], ids=["metrics-list", "string-value", "nan", "bool", "no-series", "no-seconds", "series-string", "wrong-name",
        "a-list"])
def test_a_wrong_cache_entry_is_a_miss_named_once(tmp_path, entry):
    warnings = []
    cache = Cache(tmp_path, warn=warnings.append)
    path = tmp_path / "runs" / KEY[:2] / f"{KEY}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(entry))
    assert cache.get_run(KEY, frozenset({"x"}), frozenset({"curve"})) is None
    assert cache.get_run(KEY, frozenset({"x"}), frozenset({"curve"})) is None
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_a_good_cache_entry_is_a_hit(tmp_path):
    cache = Cache(tmp_path, warn=pytest.fail)
    cache.put_run(KEY, {k: v for k, v in GOOD.items() if k != "key"})
    assert cache.get_run(KEY, frozenset({"x"}), frozenset({"curve"})) == GOOD


@pytest.mark.parametrize("summary", [{"components": [1]}, {"verdict": 3}, {"components": {"params": []}}, "x"])
def test_a_wrong_claim_summary_is_ignored(tmp_path, summary):
    warnings = []
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "a.json").write_text(json.dumps(summary))
    assert Cache(tmp_path, warn=warnings.append).get_claim("a") is None
    assert len(warnings) == 1


def test_a_run_over_a_corrupted_cache_recomputes_and_names_the_files(tmp_path):
    project = make_project(tmp_path / "project")
    add(project, "toy-a", seeds=3)
    first = bnclaims(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", "a.json")
    assert first.returncode == 0, first.stderr
    for path in (project / "cache" / "runs").rglob("*.json"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "metrics": list(data["metrics"].values())}))
    for path in (project / "cache" / "claims").rglob("*.json"):
        path.write_text(json.dumps({"components": [1]}))
    second = bnclaims(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", "b.json", "--explain")
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("ignoring invalid cache entry") == 4, second.stderr  # 3 seeds + the summary
    a, b = (json.loads((project / n).read_text())["claims"][0] for n in ("a.json", "b.json"))
    assert (a["verdict"], a["metrics"]) == (b["verdict"], b["metrics"]) and not b["cached"]


# --------------------------------------------------------------------------- 3: links out of claims/

def test_a_claim_file_linked_from_outside_is_refused_unread(tmp_path):
    project = make_project(tmp_path / "project")
    add(project, "toy-a", seeds=3)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / ".env").write_text("SECRET_TOKEN=hunter2-do-not-print\n")
    (project / "claims" / "leak.yaml").symlink_to("../../secrets/.env")
    (project / "claims" / "inside.yaml").symlink_to("toy-a.yaml")  # a link inside is fine (a duplicate id here)
    for command in (("check",), ("run", "--jobs", "1", "--cache-dir", "cache")):
        result = bnclaims(project, *command)
        assert result.returncode == 2
        assert "SECRET" not in result.stdout + result.stderr and "hunter2" not in result.stdout + result.stderr
        assert any(line.startswith("claims/leak.yaml: a link to a file outside claims/")
                   for line in result.stderr.splitlines()), result.stderr
        assert not any(line.startswith("claims/inside.yaml: a link") for line in result.stderr.splitlines())
