"""The whole suite's cost, side by side: CPU seconds and wall time of a cold run at two commits.

    python benchmarks/bench_suite.py [--base COMMIT] [--head REV] [--jobs 2]
                                     [--claims id,id] [--skip-slow] [--keep DIR]

Each commit is checked out with `git worktree add` into a temporary directory and runs with its
own code and its own claims (`python -m bnclaims run` there, PYTHONPATH pointing at that tree;
nothing is installed): `--jobs 2`, `--no-cache` and a fresh cache directory, so every seed runs.
HEAD means the last commit, not uncommitted edits. Prints, for each commit and HEAD/base:

  * CPU s in seeds: the CPU seconds each seed's worker recorded, summed over the seed runs (the
    suite's work; claims with the same experiment and params share their runs, counted once);
  * CPU s of the command: user + system time of the whole `bnclaims run` process tree (workers,
    their start-up and imports, planning and judging);
  * wall s of the command, and the claims and seeds it ran;
  * per claim (both commits), CPU seconds in seeds and their ratio, largest first.

Goals measured with it:
  * issue 15: the suite's CPU seconds <= 0.8x those of the commit before the network-core port,
    the default --base f5113e306f4c7677925f9ce1594ddd69d5f17451 (wall time at --jobs 2 beside it);
  * issue 16: the suite's CPU seconds, new claims included, <= 1.3x those before that issue:
    `--base <the last commit before issue 16's work>`. Each tree runs every claim it has, so the
    new claims count on the HEAD side and the ratio is whole suite over whole suite.

The full measurement takes about 25 minutes of both cores (two cold suites); `--claims` runs only
the listed claim ids (in each tree that has them) and `--skip-slow` leaves out claims tagged
`slow` (use-running-averages-during-training alone is about 320 CPU-s). On a shared machine the
wall time is noisy; CPU seconds much less so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = "f5113e306f4c7677925f9ce1594ddd69d5f17451"  # the commit before the network-core port (issue 15)


@dataclass
class Measure:
    rev: str
    commit: str
    claims: int = 0
    seeds: int = 0
    seed_cpu: float = 0.0  # CPU seconds the seeds' workers recorded, summed
    command_cpu: float = 0.0  # user + system seconds of the whole command and its workers
    wall: float = 0.0
    per_claim: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # asked for but not in this tree, or slow


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def claim_files(tree: Path) -> dict[str, dict]:
    """{claim id: its parsed file} of the claim files in a tree's claims/ folder (a drafts/ folder is not the suite)."""
    found = {}
    for path in sorted((tree / "claims").glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue  # an invalid file: bnclaims reports it, the benchmark does not choose it by name
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            found[data["id"]] = data
    return found


def claim_tags(tree: Path) -> dict[str, list[str]]:
    """{claim id: tags} of the claim files in a tree."""
    return {cid: [str(t) for t in data.get("tags") or []] for cid, data in claim_files(tree).items()}


def shared_runs(tree: Path) -> dict[str, str]:
    """{claim id: what its seed runs are}: claims with the same experiment and params share their runs
    (the runner runs each seed once for all of them), so the suite's work counts each group once."""
    return {cid: json.dumps([data.get("experiment"), data.get("params")], sort_keys=True, default=str)
            for cid, data in claim_files(tree).items()}


def targets(tree: Path, wanted: list[str] | None, skip_slow: bool) -> tuple[list[str], list[str]]:
    """The claim ids to run in ``tree`` ([] = every claim) and the ids left out, with why."""
    tags = claim_tags(tree)
    skipped = [f"{c} (not in this commit)" for c in wanted or [] if c not in tags]
    chosen = [c for c in wanted if c in tags] if wanted else list(tags)
    if skip_slow:
        skipped += [f"{c} (slow)" for c in chosen if "slow" in tags[c]]
        chosen = [c for c in chosen if "slow" not in tags[c]]
    return (chosen if wanted or skip_slow else []), skipped


def measure(rev: str, work: Path, jobs: int, wanted: list[str] | None, skip_slow: bool) -> Measure:
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = work / f"tree-{commit[:12]}"
    if not tree.exists():
        git("worktree", "add", "--detach", str(tree), commit)
    chosen, skipped = targets(tree, wanted, skip_slow)
    result = Measure(rev, commit, skipped=skipped)
    if (wanted or skip_slow) and not chosen:
        return result
    cache, out = work / f"cache-{commit[:12]}", work / f"results-{commit[:12]}.json"
    shutil.rmtree(cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "BNCLAIMS_EXPERIMENTS")}
    env["PYTHONPATH"] = str(tree)  # that tree's code, whatever is installed
    where = subprocess.run([sys.executable, "-c", "import bnclaims; print(bnclaims.__file__)"], cwd=tree, env=env,
                           capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"bench_suite: {rev} would run bnclaims from {where or '?'}, not from its worktree {tree}")
    command = [sys.executable, "-m", "bnclaims", "run", *chosen, "--jobs", str(jobs), "--no-cache",
               "--cache-dir", str(cache), "--json", str(out), "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    result.wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and every worker it waited for
    result.command_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if not out.is_file():  # 0 all as expected, 1 a verdict differs from 'expected': both are measurements
        sys.exit(f"bench_suite: `bnclaims run` at {rev} ({commit[:12]}) failed with code {done.returncode}:\n"
                 f"{done.stderr.strip() or done.stdout.strip()}")
    data = json.loads(out.read_text())
    for claim in data["claims"]:
        result.per_claim[claim["id"]] = claim.get("cpu_seconds", 0.0)
        result.verdicts[claim["id"]] = claim["verdict"]
        result.seeds += len(claim.get("seeds", []))
    result.claims = len(data["claims"])
    result.seed_cpu = suite_cpu(result.per_claim, shared_runs(tree))
    return result


def suite_cpu(per_claim: dict[str, float], runs: dict[str, str]) -> float:
    """The suite's work from each claim's CPU seconds in its seeds, a run shared by several claims
    counted once: per group of claims with the same runs, the largest (the claim with the most
    seeds covers the others' seeds 0..n-1)."""
    groups: dict[str, float] = {}
    for cid, cpu in per_claim.items():
        group = runs.get(cid, cid)
        groups[group] = max(groups.get(group, 0.0), cpu)
    return sum(groups.values())


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def report(head: Measure, base: Measure, jobs: int) -> None:
    print(f"cold run of the suite, --jobs {jobs}, {os.cpu_count()} cores here, Python {sys.version.split()[0]}")
    for m in (head, base):
        if m.skipped:
            print(f"  {m.rev} ({m.commit[:12]}) leaves out: {', '.join(m.skipped)}")
    print(f"{'':<28} {'HEAD ' + head.commit[:7]:>14} {'base ' + base.commit[:7]:>14} {'HEAD/base':>10}")
    rows = [("claims", head.claims, base.claims, "{:>14d}"), ("seeds", head.seeds, base.seeds, "{:>14d}"),
            ("CPU s in seeds", head.seed_cpu, base.seed_cpu, "{:>14.1f}"),
            ("CPU s of the command", head.command_cpu, base.command_cpu, "{:>14.1f}"),
            ("wall s of the command", head.wall, base.wall, "{:>14.1f}")]
    for name, a, b, fmt in rows:
        print(f"{name:<28} {fmt.format(a)} {fmt.format(b)} {ratio(a, b):>10}")
    print("goals: CPU s in seeds HEAD/base <= 0.8x before the network-core port (issue 15, the default base); "
          "<= 1.3x with the new claims (issue 16, --base before it)")
    shared = sorted(set(head.per_claim) & set(base.per_claim), key=lambda c: -head.per_claim[c])
    if shared:
        print(f"\n{'per claim, CPU s in its seeds (shared runs in each)':<52} {'HEAD':>8} {'base':>8} {'HEAD/base':>10}  verdicts")
        for c in shared:
            same = head.verdicts[c] if head.verdicts[c] == base.verdicts[c] else \
                f"{head.verdicts[c]} (base {base.verdicts[c]})"
            print(f"{c:<52} {head.per_claim[c]:>8.1f} {base.per_claim[c]:>8.1f} "
                  f"{ratio(head.per_claim[c], base.per_claim[c]):>10}  {same}")
    for m, other in ((head, base), (base, head)):
        only = sorted(set(m.per_claim) - set(other.per_claim))
        if only:
            print(f"only at {m.rev}: " + ", ".join(f"{c} {m.per_claim[c]:.1f} s" for c in only))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=BASE, help="the commit to compare with (default: before the port)")
    parser.add_argument("--head", default="HEAD", help="the commit measured against it (default: HEAD)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of each run (default 2)")
    parser.add_argument("--claims", type=lambda text: [c for c in text.split(",") if c], default=None,
                        metavar="ID,ID", help="only these claim ids (in each commit that has them)")
    parser.add_argument("--skip-slow", action="store_true", help="leave out the claims tagged slow")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="check out, cache and write results under DIR and keep them (default: a temporary "
                             "directory, removed at the end)")
    args = parser.parse_args()
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        head = measure(args.head, work, args.jobs, args.claims, args.skip_slow)
        base = measure(args.base, work, args.jobs, args.claims, args.skip_slow)
        report(head, base, args.jobs)
    finally:
        if not args.keep:
            for tree in work.glob("tree-*"):
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
