"""Results of running a claim: per-seed runs, aggregates across seeds, and the verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnclaims.claims import Claim
from bnclaims.verdict import ANSWER, Verdict, judge, mean_interval


@dataclass(frozen=True)
class SeedRun:
    seed: int
    metrics: dict[str, float]
    series: dict[str, list[float | None]]
    seconds: float  # wall-clock time of the seed in its worker
    cached: bool
    cpu_seconds: float = 0.0  # CPU time of the seed in its worker
    versions: dict | None = None  # numpy, scipy, python, bnclaims versions that computed it
    blas: str | None = None  # the BLAS library and kernel that computed it (late digits depend on it)


@dataclass(frozen=True)
class MetricSummary:
    mean: float
    ci_low: float
    ci_high: float
    sd: float
    n: int
    values: tuple[float, ...]

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci": [self.ci_low, self.ci_high], "sd": self.sd, "n": self.n,
                "values": list(self.values)}


@dataclass(frozen=True)
class SeriesSummary:
    """Pointwise mean and 95 % t-interval across seeds (None where no seed has a value)."""

    mean: tuple[float | None, ...]
    ci_low: tuple[float | None, ...]
    ci_high: tuple[float | None, ...]
    n: tuple[int, ...]


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    status: str  # a verdict, or "error"
    verdict: Verdict | None
    error: str | None
    seeds: tuple[int, ...]
    runs: tuple[SeedRun, ...]
    metrics: dict[str, MetricSummary]
    series: dict[str, SeriesSummary]
    seconds: float  # compute time summed over seeds (as measured when each seed ran)
    cached: bool  # every seed came from the cache
    input_hash: str
    components: dict
    reasons: tuple[str, ...]  # why it ran (or did not)
    site_hash: str = ""  # input_hash without library versions: what the committed site is keyed by
    ladder: tuple = ()  # ((Rung, ClaimResult | None), ...): the claim at other scales; None: not run yet

    @property
    def id(self) -> str:
        return self.claim.id

    @property
    def matches_expected(self) -> bool:
        if self.status == "error":
            return False
        return self.claim.expected is None or self.status == self.claim.expected

    @property
    def reason(self) -> str:
        return self.error if self.status == "error" else self.verdict.reason

    def to_json(self) -> dict:
        return {
            "id": self.claim.id,
            "path": str(self.claim.path),
            "title": self.claim.title,
            "verdict": self.status,
            "expected": self.claim.expected,
            "matches_expected": self.matches_expected,
            "reason": self.reason,
            "metrics": {name: m.to_json() for name, m in self.metrics.items()},
            "answer": ANSWER[self.status],
            "scope": self.claim.scope,
            "also": [{"quote": a.quote, "line": a.line} for a in self.claim.also],
            "level": self.verdict.level if self.verdict else None,
            "conditions": [c.to_json() for c in self.verdict.conditions] if self.verdict else [],
            "beyond": [c.to_json() for c in self.verdict.beyond] if self.verdict else [],
            "seeds": list(self.seeds),
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(sum(r.cpu_seconds for r in self.runs), 3),
            "cached": self.cached,
            "error": self.error,
            "input_hash": self.input_hash,
            "site_hash": self.site_hash,
            **({"ladder": [rung_json(rung, result) for rung, result in self.ladder]} if self.claim.ladder else {}),
        }

    def summary_record(self) -> dict:
        """What the cache keeps of the last run (for ``list`` and ``--explain``)."""
        return {"id": self.claim.id, "verdict": self.status, "reason": self.reason,
                "input_hash": self.input_hash, "components": self.components}


def rung_json(rung, result: "ClaimResult | None") -> dict:
    """One rung of a claim's ladder in the JSON output: its verdict and conditions, or "not run"."""
    out = {"name": rung.name, "params": rung.params, "note": rung.note}
    if result is None:
        return out | {"verdict": "not run", "answer": None, "seeds": [], "conditions": [], "beyond": []}
    return out | {k: v for k, v in result.to_json().items()
                  if k in ("verdict", "answer", "reason", "level", "conditions", "beyond", "seeds", "error", "site_hash",
                           "seconds", "cpu_seconds", "cached")}


def summarize_metric(values: list[float]) -> MetricSummary:
    mean, low, high, sd = mean_interval(np.asarray(values, dtype=np.float64))
    return MetricSummary(mean, low, high, sd, len(values), tuple(float(v) for v in values))


def summarize_series(runs: list[list[float | None]]) -> SeriesSummary:
    """Per point: ``mean_interval`` over the seeds that have a value there (None where none has one; the
    interval None where fewer than two have, as for a metric)."""
    length = max((len(r) for r in runs), default=0)
    table = np.full((len(runs), length), np.nan)
    for i, r in enumerate(runs):
        table[i, : len(r)] = [np.nan if v is None else v for v in r]
    present = ~np.isnan(table)
    points = [mean_interval(column[keep])[:3] if keep.any() else (None, None, None)
              for column, keep in zip(table.T, present.T)]

    def clean(values) -> tuple[float | None, ...]:
        return tuple(v if v is not None and math.isfinite(v) else None for v in values)

    mean, low, high = zip(*points) if points else ((), (), ())
    return SeriesSummary(clean(mean), clean(low), clean(high), tuple(int(k) for k in present.sum(axis=0)))


def build_result(
    claim: Claim,
    seeds: list[int],
    runs: list[SeedRun],
    errors: dict[int, str],
    input_hash: str,
    components: dict,
    reasons: list[str],
    site_hash: str | None = None,
) -> ClaimResult:
    seconds = sum(r.seconds for r in runs)
    cached = bool(runs) and all(r.cached for r in runs) and not errors
    metrics = {name: summarize_metric([r.metrics[name] for r in runs]) for name in (runs[0].metrics if runs else {})}
    series = {name: summarize_series([r.series[name] for r in runs]) for name in (runs[0].series if runs else {})}
    common = dict(claim=claim, seeds=tuple(seeds), runs=tuple(runs), metrics=metrics, series=series,
                  seconds=seconds, cached=cached, input_hash=input_hash, components=components,
                  reasons=tuple(reasons), site_hash=site_hash or input_hash)
    if errors:
        first = min(errors)
        more = f" (and {len(errors) - 1} more seeds failed)" if len(errors) > 1 else ""
        return ClaimResult(status="error", verdict=None, error=errors[first] + more, **common)
    try:
        verdict = judge(claim.conditions, [r.metrics for r in runs], claim.beyond)
    except (ValueError, ZeroDivisionError, FloatingPointError) as e:
        return ClaimResult(status="error", verdict=None, error=f"rule could not be judged: {e}", **common)
    return ClaimResult(status=verdict.verdict, verdict=verdict, error=None, **common)
