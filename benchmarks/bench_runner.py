"""Runner benchmark: cold and warm runs of every claim, side by side in one run.

    python benchmarks/bench_runner.py [--claims claims] [--skip-serial]

Prints, for the claims under --claims:
  * cold run (empty cache) with --jobs 2 and with --jobs 1, and the speed-up;
  * warm run (everything cached) of the whole `bnclaims run` command, and per claim;
  * in-process overhead of a fully cached claim (load + plan + judge), per claim.
Goals (issue 4): warm run of all claims <= 2 s; cached per-claim overhead <= 20 ms;
cold speed-up of --jobs 2 over --jobs 1 >= 1.7x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], cache: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bnclaims", "run", "--quiet", "--cache-dir", str(cache), *args],
                   cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def in_process_overhead(claims_dir: Path, cache: Path, repeats: int = 5) -> tuple[float, int]:
    sys.path.insert(0, str(ROOT))
    from bnclaims.claims import load_claims
    from bnclaims.runner import RunOptions, run_claims

    best = float("inf")
    n = 0
    for _ in range(repeats):
        start = time.perf_counter()
        claims, _ = load_claims([claims_dir])
        results = run_claims(claims, RunOptions(cache_dir=cache), progress=False)
        best = min(best, time.perf_counter() - start)
        n = len(results)
        assert all(r.cached for r in results), "warm run was not fully cached"
    return best, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=Path, default=ROOT / "claims")
    parser.add_argument("--skip-serial", action="store_true", help="skip the --jobs 1 cold run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache2, cache1 = Path(tmp) / "c2", Path(tmp) / "c1"
        cold2 = cli(["--claims", str(args.claims), "--jobs", "2"], cache2)
        cold1 = None if args.skip_serial else cli(["--claims", str(args.claims), "--jobs", "1"], cache1)
        warm = min(cli(["--claims", str(args.claims)], cache2) for _ in range(3))
        overhead, n = in_process_overhead(args.claims, cache2)
    print(f"claims: {n}   machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"{'measure':<44} {'seconds':>9} {'goal':>12}")
    print(f"{'cold run, --jobs 2':<44} {cold2:>9.2f}")
    if cold1 is not None:
        print(f"{'cold run, --jobs 1':<44} {cold1:>9.2f}")
        print(f"{'speed-up of --jobs 2 over --jobs 1':<44} {cold1 / cold2:>8.2f}x {'>= 1.7x':>12}")
    print(f"{'warm run, whole command (best of 3)':<44} {warm:>9.2f} {'<= 2 s':>12}")
    print(f"{'warm run per claim, whole command':<44} {warm / max(n, 1) * 1000:>8.1f}ms")
    print(f"{'cached per-claim overhead, in process':<44} {overhead / max(n, 1) * 1000:>8.1f}ms {'<= 20 ms':>12}")


if __name__ == "__main__":
    main()
