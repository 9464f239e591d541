"""Verdicts must not depend on the BLAS kernel: run every claim from scratch under two OpenBLAS
kernels, side by side, and compare verdicts, headline conditions and estimates.

    python benchmarks/check_blas.py                      # native kernel vs SandyBridge
    python benchmarks/check_blas.py --kernels Haswell Prescott --seed-base 10000 -k gamma

Numbers differ in late digits between kernels (different summation orders); verdicts must not.
Exit 1 if any verdict differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(kernel: str | None, args, out: Path) -> dict:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if kernel:
        env["OPENBLAS_CORETYPE"] = kernel
    command = [sys.executable, "-m", "bnclaims", "run", "--no-cache", "--quiet", "--json", str(out),
               "--seed-base", str(args.seed_base), "--cache-dir", str(out.parent / f"cache-{kernel or 'native'}")]
    if args.k:
        command += ["-k", args.k]
    subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL)
    return {c["id"]: c for c in json.loads(out.read_text())["claims"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", nargs=2, default=[None, "SandyBridge"], metavar="KERNEL",
                        help="two OPENBLAS_CORETYPE values ('native' for the one OpenBLAS picks)")
    parser.add_argument("--seed-base", type=int, default=0)
    parser.add_argument("-k", help="select claims (as bnclaims run -k)")
    args = parser.parse_args()
    kernels = [None if k in (None, "native") else k for k in args.kernels]
    with tempfile.TemporaryDirectory() as tmp:
        a, b = (run(k, args, Path(tmp) / f"{k or 'native'}.json") for k in kernels)
    names = [k or "native" for k in kernels]
    differ, flipped, moved = 0, 0, 0
    for claim_id in sorted(a):
        x, y = a[claim_id], b.get(claim_id, {})
        conditions = list(zip(x.get("conditions", []), y.get("conditions", [])))
        flips = [cx["name"] for cx, cy in conditions if cx["verdict"] != cy["verdict"]]
        drift = max((abs(cx["estimate"] - cy["estimate"]) / max(abs(cx["estimate"]), 1e-12)
                     for cx, cy in conditions if cx["estimate"] is not None and cy["estimate"] is not None),
                    default=0.0)
        flipped += len(flips)
        moved += drift > 1e-6
        mark = "" if x["verdict"] == y.get("verdict") else "   <-- VERDICT DIFFERS"
        differ += bool(mark)
        print(f"{claim_id:55s} {x['verdict']:>12s} {y.get('verdict', 'missing'):>12s}  "
              f"max rel. estimate change {drift:.1e}{'; flipped: ' + ', '.join(flips) if flips else ''}{mark}")
    print(f"\n{len(a)} claims, {names[0]} vs {names[1]}: {differ} verdicts differ, {flipped} headline conditions "
          f"flipped, {moved} claims with an estimate moved beyond 1e-6 relative")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
