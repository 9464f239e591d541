"""Security: nothing from a claim file is ever run, and no path from one leaves its directory.

* the package's sources hold no eval/exec/unsafe YAML/pickle/shell call (AST scan);
* verdict rules go through the grammar, which allows only its statistics and operators;
* thread names cannot reach outside ``claims/threads/`` (``..``, absolute paths, symlinks);
* claim ids cannot direct a page outside the site; templates never switch escaping off.
"""

from __future__ import annotations

import ast
import os
import posixpath
import re
from pathlib import Path

import pytest

import toy_experiments  # noqa: F401 - registers toy-normal
from bnclaims.claims import ID_PATTERN, load_claims
from bnclaims.rules import RuleSyntaxError, parse_condition
from helpers import QUOTE, ROOT, add, bnclaims, claim_text, make_project

PACKAGE = ROOT / "bnclaims"


# --------------------------------------------------------------------------- no code from data

FORBIDDEN_CALLS = {
    "eval", "exec", "compile", "__import__", "execfile", "input",
    "pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "shelve.open",
    "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all",
    "os.system", "os.popen", "os.execv", "os.execvp", "os.spawnv", "subprocess.getoutput", "subprocess.getstatusoutput",
}
FORBIDDEN_NAMES = {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "?"


def unsafe_calls(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in FORBIDDEN_CALLS:
                found.append(f"{where}: {name}(...)")
            if name.startswith("subprocess.") or name in ("Popen", "run", "call", "check_output", "check_call"):
                for keyword in node.keywords:
                    if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value):
                        found.append(f"{where}: {name}(..., shell=...)")
        elif isinstance(node, ast.Attribute) and dotted(node) in FORBIDDEN_NAMES:
            found.append(f"{where}: {dotted(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("pickle", "marshal", "shelve"):
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Import) and {a.name for a in node.names} & {"pickle", "marshal", "shelve"}:
            found.append(f"{where}: import pickle/marshal/shelve")
    return found


def test_the_scan_finds_what_it_looks_for():
    sample = ("import pickle\nimport yaml, subprocess\neval(x)\nyaml.load(s)\nyaml.unsafe_load(s)\n"
              "subprocess.run(c, shell=True)\nyaml.load(s, Loader=yaml.Loader)\n")
    found = unsafe_calls(sample, "sample.py")
    assert len(found) == 7, found


def test_no_eval_exec_unsafe_yaml_pickle_or_shell_in_the_package():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == []


def test_templates_never_turn_escaping_off():
    from bnclaims.render import _environment

    assert _environment().autoescape is True
    for path in (PACKAGE / "templates").glob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\|\s*safe\b|autoescape\s+false", text), path.name


@pytest.mark.parametrize("text", [
    "__import__('os').system('x')", "mean(x) > 0 or True", "mean(x.__class__) > 0", "exec(x) > 0",
    "mean(x) > 0; import os", "mean(x) > 0 and mean(y) > 0", "mean(x) > 1 if x else 0", "mean(x) > (lambda: 0)()",
    "mean(x) > 1e3e3", "mean(x[0]) > 0", "mean(x) == 0", "mean(x) > x", "mean(x * y) > 0", "mean(x) > 0 # ok",
])
def test_rules_outside_the_grammar_are_refused(text):
    with pytest.raises(RuleSyntaxError):
        parse_condition(text)


# --------------------------------------------------------------------------- paths from claim files

@pytest.fixture
def claims_dir(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project") / "claims"


def thread_problems(claims_dir: Path, thread: str) -> list[str]:
    path = claims_dir / "toy-a.yaml"
    path.write_text(claim_text("toy-a").replace("thread: 000_9d0fa3abc03cef76", f"thread: {thread}"), encoding="utf-8")
    claims, problems = load_claims([path])
    assert not claims, f"thread {thread!r} was accepted"
    return [p.message for p in problems if p.line == 5]


@pytest.mark.parametrize("thread", ["../../etc/passwd", "/etc/passwd", "..", "../threads/000_9d0fa3abc03cef76",
                                    "a/../000_9d0fa3abc03cef76", "000_9d0fa3abc03cef76/..", "'..\\\\evil'",
                                    "~/secret", ".hidden", "'%2e%2e/x'", "'a\\x00b'"])
def test_thread_names_cannot_leave_the_threads_directory(claims_dir, thread):
    assert thread_problems(claims_dir, thread)


def test_a_thread_that_links_outside_is_refused(claims_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{QUOTE}\n", encoding="utf-8")  # the quote is there: only the link is wrong
    (claims_dir / "threads" / "leak.txt").symlink_to(secret)
    (claims_dir / "threads" / "loop.txt").symlink_to(claims_dir / "threads" / "loop.txt")
    (message,) = thread_problems(claims_dir, "leak")
    assert message.startswith("thread must be a file under ") and message.endswith(
        "/threads/ (found 'leak', a link to a file outside it)")
    assert thread_problems(claims_dir, "loop")[0].startswith("no such thread")


def test_a_thread_linked_inside_the_threads_directory_is_fine(claims_dir):
    (claims_dir / "threads" / "alias.txt").symlink_to("000_9d0fa3abc03cef76.txt")
    path = claims_dir / "toy-a.yaml"
    path.write_text(claim_text("toy-a").replace("thread: 000_9d0fa3abc03cef76", "thread: alias"), encoding="utf-8")
    claims, problems = load_claims([path])
    assert problems == [] and claims[0].thread == "alias.txt"


def test_a_fifo_or_a_device_named_as_a_claim_file_is_refused_not_read(tmp_path):
    project = make_project(tmp_path)
    os.mkfifo(project / "claims" / "fifo.yaml")  # opening it would block for ever
    (project / "claims" / "zero.yaml").symlink_to("/dev/zero")  # reading it would never end
    out = bnclaims(project, "check", "claims/fifo.yaml", "claims/zero.yaml", timeout=60)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "claims/fifo.yaml: not a regular file (expected a YAML claim file)",
        "claims/zero.yaml: a link to a file outside claims/; claim files must be inside the claims directory (not read)"]
    (project / "claims" / "device.yaml").symlink_to("zero.yaml")  # inside, but to something that is no file
    (project / "claims" / "zero.yaml").unlink()
    os.mkfifo(project / "claims" / "zero.yaml")
    out = bnclaims(project, "check", "claims/device.yaml", timeout=60)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert out.stderr.endswith(": not a regular file (expected a YAML claim file)\n")


@pytest.mark.parametrize("claim_id", ["../../escaped", "/tmp/escaped", "a/b", "..", ".hidden", "x.html", "a\\b",
                                      "A", "a--b", "-a", "a-", "a\nb", "a\x00b", "a b"])
def test_ids_that_could_name_another_path_are_refused(claim_id):
    assert not ID_PATTERN.match(claim_id) or ID_PATTERN.match(claim_id).group() != claim_id


def test_every_page_of_the_site_stays_inside_it(claims_dir):
    """Ids the loader accepts become ``claims/<id>.html``; no page path can point anywhere else."""
    from bnclaims.executor import Outcome
    from bnclaims.render import render_site
    from bnclaims.runner import RunOptions, run_claims
    from bnclaims.worker import run_job

    add(claims_dir.parent, "toy-a", seeds=2)
    add(claims_dir.parent, "0-9-z", seeds=2)
    claims, problems = load_claims([claims_dir])
    assert problems == []

    class Inline:
        def run(self, jobs, on_done):
            for job in jobs:
                on_done(job, Outcome(*run_job(job.experiment, job.seed, job.params, ())))

    results = run_claims(claims, RunOptions(cache_dir=claims_dir.parent / "cache"), executor=Inline(), progress=False)
    files = render_site(results, claims_dir)
    assert {"claims/toy-a.html", "claims/0-9-z.html"} <= set(files)
    for name in files:
        assert not name.startswith("/") and "\\" not in name and "\x00" not in name, name
        assert posixpath.normpath(name) == name and not name.startswith(".."), name
