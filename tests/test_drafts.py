"""A claim tagged ``draft`` is checked and run but never published; the commands count drafts."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import add, bnclaims, make_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def test_a_draft_is_run_and_counted_but_not_published(project):
    add(project, "toy-public")
    add(project, "toy-draft", tags="toy, draft")
    check = bnclaims(project, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "2 valid, 0 invalid claim file(s); 1 draft (not published: remove the draft tag to publish)" in check.stdout
    build = bnclaims(project, "build", "--out", "site", "--jobs", "1")
    assert build.returncode == 0, build.stdout + build.stderr
    assert "1 draft (not published" in build.stdout
    assert "open site/index.html" in build.stdout
    site = project / "site"
    assert (site / "claims" / "toy-public.html").is_file()
    assert not (site / "claims" / "toy-draft.html").exists()
    assert "toy-draft" not in (site / "index.html").read_text()
    assert "toy-draft" not in (site / "threads" / "000_9d0fa3abc03cef76.html").read_text()


def test_the_untouched_scaffold_is_a_draft_with_a_title_to_write(project):
    out = bnclaims(project, "new", "my-claim")
    assert out.returncode == 0, out.stderr
    text = (project / "claims" / "my-claim.yaml").read_text()
    assert "tags: [draft]" in text and "Write the title" in text
    assert "scope:" in text and "tests:" in text and "beyond:" in text
    check = bnclaims(project, "check")
    assert check.returncode == 0 and "1 draft" in check.stdout
