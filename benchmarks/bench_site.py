"""Time to render the whole static site from results that are already computed (budget: 1 s).

Run:  python benchmarks/bench_site.py            # 30 fake claims with realistic series
      python benchmarks/bench_site.py --real     # the claims under claims/ (runs whatever is not cached)

The fake set: 30 claims spread over the five threads, 20 seeds each, three 500-step training
curves and a 10-point sweep per claim (so every claim page has a line plot with bands and a
points plot), 3 rule conditions each. Printed: the first build in a fresh process (includes
compiling the templates) and the best / median of later ones, for rendering alone and for
rendering plus the atomic write, with the ratio to the 1 s budget.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bnclaims.experiments import experiment  # noqa: E402

BUDGET = 1.0
N_CLAIMS, N_SEEDS, STEPS = 30, 20, 500
SIZES = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]


@experiment("bench-site-fake", metrics={"acc_bn": "test accuracy with BN", "acc_plain": "test accuracy without",
                                        "steps_ratio": "steps to 90 %, plain / BN"},
            series={"step": "training step", "loss_bn": "training loss, BN", "loss_plain": "training loss, plain",
                    "loss_ln": "training loss, LayerNorm", "batch_size": "batch sizes", "acc_sweep": "accuracy"})
def bench_site_fake(rng: np.random.Generator, *, lr: float = 0.1) -> dict:  # never run: results are faked
    raise NotImplementedError


CLAIM = """\
id: {id}
title: "Claim number {n}: batch norm does something measurable"
claim: >
  With batch norm, measurement {n} changes by more than a small margin across seeds.
source:
  thread: {thread}
  quote: "{quote}"
tags: [bench, training]
experiment: bench-site-fake
params: {{lr: 0.{n}}}
seeds: {seeds}
rule:
  conditions:
    - name: BN is more accurate
      holds: mean(acc_bn - acc_plain) > 0.01
    - name: BN is faster
      holds: geomean(steps_ratio) >= 1.2
    - name: accuracy is high
      holds: median(acc_bn) > 0.9
explanation: >
  A made-up explanation of what was measured, what came out and why, long enough to wrap over
  several lines on the claim page like the real ones do.
references:
  - title: Ioffe & Szegedy 2015
    arxiv: "1502.03167"
plots:
  - title: Training loss
    x: step
    y: [loss_bn, loss_plain, loss_ln]
    labels: [BatchNorm, no norm, LayerNorm]
    xlabel: training step
    ylabel: loss (nats)
  - title: Accuracy over batch size
    x: batch_size
    y: [acc_sweep]
    labels: [BatchNorm]
    xlabel: batch size
    ylabel: test accuracy
    xscale: log
    kind: points
"""


def fake_results(workdir: Path):
    from bnclaims.claims import load_claims
    from bnclaims.results import SeedRun, build_result

    claims_dir = workdir / "claims"
    shutil.copytree(ROOT / "claims" / "threads", claims_dir / "threads")
    threads = sorted((claims_dir / "threads").glob("*.txt"))
    rng = np.random.default_rng(0)
    for n in range(N_CLAIMS):
        thread = threads[n % len(threads)]
        words = thread.read_text(encoding="utf-8").split()
        while True:  # a ten-word window that needs no YAML escaping
            start = int(rng.integers(0, max(1, len(words) - 12)))
            quote = " ".join(words[start:start + 10])
            if not any(c in quote for c in '"\\$'):
                break
        text = CLAIM.format(id=f"bench-claim-{n:02d}", n=n, thread=thread.stem, quote=quote, seeds=N_SEEDS)
        (claims_dir / f"bench-claim-{n:02d}.yaml").write_text(text, encoding="utf-8")
    claims, problems = load_claims([claims_dir])
    assert not problems, problems
    results = []
    steps = np.arange(STEPS, dtype=float)
    for claim in claims:
        runs = []
        for seed in range(N_SEEDS):
            r = np.random.default_rng(seed)
            curve = lambda tau: (np.exp(-steps / tau) + 0.05 * r.standard_normal(STEPS) ** 2).tolist()  # noqa: E731
            runs.append(SeedRun(seed, {"acc_bn": 0.95 + 0.01 * r.standard_normal(),
                                       "acc_plain": 0.93 + 0.01 * r.standard_normal(),
                                       "steps_ratio": float(np.exp(0.3 + 0.1 * r.standard_normal()))},
                                {"step": steps.tolist(), "loss_bn": curve(40.0), "loss_plain": curve(120.0),
                                 "loss_ln": curve(70.0), "batch_size": SIZES,
                                 "acc_sweep": [0.9 - 0.1 / np.sqrt(b) + 0.01 * r.standard_normal() for b in SIZES]},
                                1.5, True))
        results.append(build_result(claim, list(range(N_SEEDS)), runs, {}, "f" * 64, {}, []))
    return results, claims_dir


def real_results():
    from bnclaims.claims import load_claims
    from bnclaims.runner import RunOptions, run_claims

    claims, problems = load_claims([ROOT / "claims"])
    return run_claims(claims, RunOptions(), progress=True), ROOT / "claims"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="render the real claims (runs what is not cached)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from bnclaims import render

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results, claims_dir = real_results() if args.real else fake_results(workdir)
        out = workdir / "site"

        start = time.perf_counter()
        pages = render.build_site(results, out, claims_dir)
        first = time.perf_counter() - start

        render_times, build_times = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            render.render_site(results, claims_dir)
            render_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            render.build_site(results, out, claims_dir)
            build_times.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())

    print(f"site: {len(results)} claims, {pages} pages, {size / 1e6:.1f} MB "
          f"({'real claims' if args.real else f'fake: {N_SEEDS} seeds, {STEPS}-step curves'})")
    print(f"{'':28}{'seconds':>9}{'/ budget':>10}")
    print(f"{'first build (cold process)':28}{first:9.3f}{first / BUDGET:10.2f}")
    print(f"{'render only, best':28}{min(render_times):9.3f}{min(render_times) / BUDGET:10.2f}")
    print(f"{'render only, median':28}{statistics.median(render_times):9.3f}"
          f"{statistics.median(render_times) / BUDGET:10.2f}")
    print(f"{'render + write, best':28}{min(build_times):9.3f}{min(build_times) / BUDGET:10.2f}")
    print(f"{'render + write, median':28}{statistics.median(build_times):9.3f}"
          f"{statistics.median(build_times) / BUDGET:10.2f}")


if __name__ == "__main__":
    main()
