"""What bnclaims writes, and where (issue 17, items 1, 2, 4, 5, 7, 11): the ``--out`` directory, the
cache and the ``--json`` file, nothing else; never a file it did not make; a site swap that a kill
cannot leave half done; files readable as the umask says; strict JSON that never loses the results.

Real subprocesses, toy experiments, ``--jobs 1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import add, bnclaims, env_for_toys, make_project



def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's hash and mode, a link's target, a directory, a FIFO."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = os.lstat(path)
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                out[key] = "link:" + os.readlink(path)
            elif stat.S_ISDIR(info.st_mode):
                out[key] = f"dir {stat.S_IMODE(info.st_mode):o}"
            elif stat.S_ISREG(info.st_mode):
                out[key] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {stat.S_IMODE(info.st_mode):o}"
            else:
                out[key] = f"special {stat.S_IFMT(info.st_mode):o}"
    return out


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def project(tmp_path):
    project = make_project(tmp_path / "project")
    add(project, "toy-a", seeds=3)
    add(project, "toy-b", seeds=3, params="{mu: 2.0}")
    return project


# --------------------------------------------------------------------------- nothing else is touched

def test_run_and_build_touch_nothing_outside_out_the_cache_and_the_json(tmp_path, project):
    # look-alikes of everything bnclaims ever names beside --out, made by the user: all must stay
    for name in (".site.old-2023", ".site.new-mine", ".site.swap-0123456789abcdef", ".site.lock"):
        (project / name).mkdir()
        (project / name / "keep.txt").write_text("the user's\n")
    (tmp_path / "beside.txt").write_text("next to the project\n")
    before = snapshot(tmp_path)
    run = bnclaims(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", "results/run.json")
    build = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site",
                     "--json", "build.json")
    assert (run.returncode, build.returncode) == (0, 0), run.stderr + build.stderr
    touched = changed(before, snapshot(tmp_path))
    allowed = ("project/site", "project/cache", "project/results", "project/build.json")
    outside = sorted(p for p in touched if not p.startswith(allowed))
    assert outside == [], outside
    assert (project / "site" / "index.html").is_file()


def test_a_users_lookalike_of_an_old_site_survives_a_build(project):
    first = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site")
    assert first.returncode == 0, first.stderr
    # `cp -r site .site.old-2023` copies the marker too; neither it nor a '*' out may delete it
    subprocess.run(["cp", "-r", "site", ".site.old-2023"], cwd=project, check=True)
    subprocess.run(["cp", "-r", "site", ".X.old-1"], cwd=project, check=True)
    second = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site")
    star = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "*")
    assert (second.returncode, star.returncode) == (0, 0), second.stderr + star.stderr
    assert (project / ".site.old-2023" / "index.html").is_file()
    assert (project / ".X.old-1" / "index.html").is_file()
    assert {p.name for p in project.iterdir()} == {".X.old-1", ".site.old-2023", "*", "cache", "claims", "site"}


def test_a_refused_out_leaves_nothing_and_runs_nothing(tmp_path, project):
    before = snapshot(tmp_path)
    result = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", ".")
    assert result.returncode == 2
    assert "not a site built by bnclaims" in result.stderr and len(result.stderr.splitlines()) == 1
    assert changed(before, snapshot(tmp_path)) == set()  # no lock beside it, no cache: nothing ran


def test_json_or_cache_inside_out_is_refused_before_anything_runs(tmp_path, project):
    before = snapshot(tmp_path)
    inside = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site",
                      "--json", "site/results.json")
    cache_inside = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "site/cache", "--out", "site")
    for result in (inside, cache_inside):
        assert result.returncode == 2 and "inside --out" in result.stderr, result.stderr
    assert changed(before, snapshot(tmp_path)) == set()


# --------------------------------------------------------------------------- the swap survives a kill

KILL_AT_RENAME = """\
import os, runpy, signal, sys
calls = []
real = os.rename
def rename(src, dst, *a, **k):
    calls.append(src)
    if len(calls) == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.rename = rename
sys.argv = ["bnclaims"] + sys.argv[1:]
runpy.run_module("bnclaims", run_name="__main__")
"""


def killed_build(project: Path, at: int) -> subprocess.CompletedProcess:
    env = env_for_toys()
    env["KILL_AT"] = str(at)
    return subprocess.run([sys.executable, "-c", KILL_AT_RENAME, "build", "--jobs", "1", "--cache-dir", "cache",
                           "--out", "site"], cwd=project, env=env, capture_output=True, text=True, timeout=120)


def site_text(project: Path) -> bytes:
    return (project / "site" / "claims" / "toy-b.html").read_bytes()


def test_a_kill_between_the_two_renames_is_completed_by_the_next_command(project):
    assert bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site").returncode == 0
    path = project / "claims" / "toy-b.yaml"
    path.write_text(path.read_text().replace("explanation: A toy.", "explanation: The new text."))
    killed = killed_build(project, 2)  # rename 1: site -> old; killed at rename 2: new -> site
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (project / "site").exists()  # the moment the issue is about
    # any later command naming this --out (here one that selects nothing, so it builds nothing) recovers first
    after = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site", "-k", "nothing")
    assert after.returncode == 5, after.stderr
    assert b"The new text." in site_text(project)  # the swap was completed, not redone
    assert sorted(p.name for p in project.iterdir()) == ["cache", "claims", "site"]


def test_a_kill_before_the_swap_rolls_back_to_the_old_site(project):
    assert bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site").returncode == 0
    old = site_text(project)
    path = project / "claims" / "toy-b.yaml"
    path.write_text(path.read_text().replace("explanation: A toy.", "explanation: The new text."))
    killed = killed_build(project, 1)  # killed at rename 1: the new site is whole, the old one in place
    assert killed.returncode == -signal.SIGKILL
    assert site_text(project) == old
    assert len(list(project.glob(".site.*"))) == 2  # the journal and the new site, named by one token
    after = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site", "-k", "nothing")
    assert after.returncode == 5
    assert site_text(project) == old
    assert sorted(p.name for p in project.iterdir()) == ["cache", "claims", "site"]


# --------------------------------------------------------------------------- --json targets

def test_json_through_a_symlink_writes_the_target_and_keeps_the_link(tmp_path, project):
    target = tmp_path / "target.json"
    target.write_text("old\n")
    (project / "link.json").symlink_to(target)
    devnull = project / "null.json"
    devnull.symlink_to(os.devnull)
    for name in ("link.json", "null.json"):
        result = bnclaims(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", name)
        assert result.returncode == 0, result.stderr
    assert (project / "link.json").is_symlink() and os.readlink(project / "link.json") == str(target)
    assert [c["id"] for c in strict_loads(target.read_text())["claims"]] == ["toy-a", "toy-b"]
    assert devnull.is_symlink() and stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_json_to_a_fifo_is_written_through(tmp_path, project):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = bnclaims(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", str(fifo))
    reader.join(30)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert len(strict_loads(received[0])["claims"]) == 2


def test_json_to_a_directory_is_a_one_line_usage_error_before_anything_runs(tmp_path, project):
    (project / "adir").mkdir()
    result = bnclaims(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", "adir")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["bnclaims: error: --json adir: is a directory; give a file name "
                                          "(or '-' for standard output)"]
    assert not (project / "cache").exists()


def test_json_dash_is_standard_output_alone(project):
    result = bnclaims(project, "run", "--jobs", "1", "--cache-dir", "cache", "--json", "-")
    assert result.returncode == 0, result.stderr
    assert [c["id"] for c in strict_loads(result.stdout)["claims"]] == ["toy-a", "toy-b"]
    assert "toy-a" in result.stderr and "2 claims" in result.stderr  # the table went to stderr
    check = bnclaims(project, "check", "--json", "-")
    assert len(strict_loads(check.stdout)["claims"]) == 2


# --------------------------------------------------------------------------- modes and strict JSON

def test_files_follow_the_umask_so_a_shared_cache_is_readable(project):
    result = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site", "--json", "r.json")
    assert result.returncode == 0, result.stderr
    mask = os.umask(0)
    os.umask(mask)
    files = [project / "r.json", *(project / "cache").rglob("*.json"), *(project / "site").rglob("*.*")]
    modes = {str(p.relative_to(project)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes


def test_one_seed_infinite_intervals_give_strict_json_and_a_site(project):
    result = bnclaims(project, "build", "--jobs", "1", "--cache-dir", "cache", "--out", "site", "--json", "r.json",
                      "--seeds", "1")
    assert "internal error" not in result.stderr, result.stderr
    data = strict_loads((project / "r.json").read_text())  # NaN/Infinity are not JSON
    assert [c["id"] for c in data["claims"]] == ["toy-a", "toy-b"]
    assert (project / "site" / "claims" / "toy-a.html").is_file()
    for path in (project / "cache").rglob("*.json"):
        strict_loads(path.read_text())


def test_json_to_dev_stdout_redirected_to_a_file_keeps_the_file_whole(tmp_path, project):
    # /dev/stdout is a link to our own stdout: written as '-' is, not truncated under the table
    with open(tmp_path / "out.txt", "w") as out:
        result = subprocess.run([sys.executable, "-m", "bnclaims", "run", "--jobs", "1", "--cache-dir", "cache",
                                 "--json", "/dev/stdout"], cwd=project, env=env_for_toys(), stdout=out,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(strict_loads((tmp_path / "out.txt").read_text())["claims"]) == 2
    assert "2 claims" in result.stderr
