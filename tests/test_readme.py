"""Every claim file shown in the README passes ``bnclaims check`` (the README must stay true)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bnclaims.claims import load_claims

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", README, re.S) if re.search(r"^id: ", b, re.M)]


def test_the_readme_shows_claim_files():
    assert BLOCKS, "the README has no YAML claim block"


@pytest.mark.parametrize("block", BLOCKS, ids=[re.search(r"^id: (\S+)", b, re.M).group(1) for b in BLOCKS])
def test_every_readme_claim_block_passes_check(tmp_path, block):
    claim_id = re.search(r"^id: (\S+)", block, re.M).group(1)
    claims_dir = tmp_path / "claims"
    shutil.copytree(ROOT / "claims" / "threads", claims_dir / "threads")
    path = claims_dir / f"{claim_id}.yaml"
    path.write_text(block, encoding="utf-8")
    claims, problems = load_claims([path])
    assert [str(p) for p in problems] == []
    assert claims[0].scope and all(c.tests for c in claims[0].conditions)
