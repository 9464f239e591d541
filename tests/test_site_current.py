"""The committed site/ is current: every claim's page was built from the claim, code and versions as they are now.

Rebuild with `bnclaims build` when this fails. (Byte-identity across machines is not checked here: late
digits depend on the BLAS kernel; the input hashes say whether the evidence is current.)
"""

from __future__ import annotations

import json
from pathlib import Path

from bnclaims.cache import Cache
from bnclaims.claims import load_claims
from bnclaims.runner import RunOptions, plan

ROOT = Path(__file__).resolve().parents[1]


def test_committed_site_matches_current_claims(tmp_path):
    manifest = json.loads((ROOT / "site" / "manifest.json").read_text())["claims"]
    claims, problems = load_claims([ROOT / "claims"])
    assert problems == []
    current = {p.claim.id: p.site_hash for p in plan(claims, RunOptions(cache_dir=tmp_path), Cache(tmp_path))}
    assert sorted(manifest) == sorted(current), "claims added or removed since site/ was built"
    stale = sorted(i for i in current if manifest[i]["input_hash"] != current[i])
    assert not stale, f"site/ is stale for {stale}: run `bnclaims build`"


def test_committed_site_has_a_page_per_claim_and_thread():
    site = ROOT / "site"
    manifest = json.loads((site / "manifest.json").read_text())["claims"]
    for claim_id in manifest:
        assert (site / "claims" / f"{claim_id}.html").is_file()
    for thread in (ROOT / "claims" / "threads").glob("*.txt"):
        assert (site / "threads" / f"{thread.stem}.html").is_file()
    for claim_id in manifest:  # the results the site was built from, so a fresh clone's build runs nothing
        assert (site / "results" / f"{claim_id}.json").is_file()


def test_committed_site_has_every_rung_judged_and_current(tmp_path):
    """A plain `bnclaims build` after a code change keeps only the rungs whose results are still current
    (the others show "not run yet"): the committed site must come from `bnclaims build --ladder`."""
    manifest = json.loads((ROOT / "site" / "manifest.json").read_text())["ladder"]
    claims, problems = load_claims([ROOT / "claims"])
    assert problems == []
    rungs = [claim.at_rung(rung) for claim in claims for rung in claim.ladder]
    current = {p.claim.id: p.site_hash for p in plan(rungs, RunOptions(cache_dir=tmp_path), Cache(tmp_path))}
    missing = sorted(set(current) - set(manifest))
    assert not missing, f"site/ has no result for the rungs {missing}: run `bnclaims build --ladder`"
    assert sorted(manifest) == sorted(current), "rungs removed since site/ was built"
    stale = sorted(i for i in current if manifest[i]["input_hash"] != current[i])
    assert not stale, f"site/ is stale for the rungs {stale}: run `bnclaims build --ladder`"
    for rung_id in manifest:
        assert (ROOT / "site" / "results" / f"{rung_id}.json").is_file()
