"""benchmarks/bench_suite.py counts a seed run shared by several claims once."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_bench_suite():
    spec = importlib.util.spec_from_file_location("bench_suite", ROOT / "benchmarks" / "bench_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_claims_with_the_same_experiment_and_params_share_their_runs(tmp_path):
    bench = load_bench_suite()
    claims = tmp_path / "claims"
    claims.mkdir()
    for cid, params, seeds in [("a", {"x": 1}, 10), ("b", {"x": 1}, 20), ("c", {"x": 2}, 10)]:
        (claims / f"{cid}.yaml").write_text(f"id: {cid}\nexperiment: e\nparams: {params}\nseeds: {seeds}\ntags: [t]\n")
    (claims / "broken.yaml").write_text("id: [unclosed\n")   # bnclaims reports it; the benchmark skips it
    runs = bench.shared_runs(tmp_path)
    assert runs["a"] == runs["b"] != runs["c"] and "broken" not in runs
    # a and b share one run (b's 20 seeds cover a's 10); c is its own; an id without a file counts alone
    assert bench.suite_cpu({"a": 5.0, "b": 9.0, "c": 2.0, "d": 1.0}, runs) == 9.0 + 2.0 + 1.0
    assert bench.claim_tags(tmp_path) == {"a": ["t"], "b": ["t"], "c": ["t"]}
