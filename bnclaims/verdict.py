"""Per-seed metrics -> statistics -> a verdict.

Each condition of a claim's rule is judged on the per-seed values of its operand:

* ``mean``    : 95 % t-interval of the mean (scipy.stats.t), one-sided t-test p-value;
* ``geomean`` : the same on log values, reported back on the ratio scale;
* ``median``  : 95 % percentile-bootstrap interval (scipy.stats.bootstrap, fixed seed);
* ``min``/``max``: exact — the extreme over seeds is compared, no interval is needed.

A condition is *supported* when the whole interval satisfies the comparison, *refuted*
when the whole interval violates it, and *inconclusive* otherwise (the evidence cannot
tell at this number of seeds). Conditions combine into the claim's verdict:

* every condition supported -> ``supported``; every one refuted -> ``refuted``;
* some supported and some refuted -> ``mixed`` (holds in some settings, not in others);
* anything else -> ``inconclusive``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bnclaims.rules import Condition

VERDICTS = ("supported", "refuted", "mixed", "inconclusive", "error")
CONFIDENCE = 0.95


@dataclass(frozen=True)
class ConditionResult:
    name: str
    text: str
    verdict: str  # supported | refuted | inconclusive
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    p_value: float | None  # one-sided test of the comparison (None for exact stats)
    effect_size: float | None  # standardized: (estimate - threshold) / sd (Cohen's d), None if sd = 0
    reason: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "rule": self.text,
            "verdict": self.verdict,
            "estimate": self.estimate,
            "ci": [self.ci_low, self.ci_high],
            "n": self.n,
            "p_value": self.p_value,
            "effect_size": self.effect_size,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    conditions: tuple[ConditionResult, ...]
    n_seeds: int

    @property
    def headline(self) -> ConditionResult | None:
        """The condition that best explains the verdict (first one agreeing with it)."""
        for c in self.conditions:
            if c.verdict == self.verdict:
                return c
        return self.conditions[0] if self.conditions else None


def operand_values(condition: Condition, per_seed: list[dict[str, float]]) -> np.ndarray:
    left = np.array([m[condition.left] for m in per_seed], dtype=np.float64)
    if condition.right is None:
        return left
    right = np.array([m[condition.right] for m in per_seed], dtype=np.float64)
    if condition.combine == "-":
        return left - right
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = left / right
    if not np.all(np.isfinite(ratio)):
        bad = int(np.argmax(~np.isfinite(ratio)))
        raise ValueError(f"{condition.operand_text} is not finite in run {bad + 1} (division by zero)")
    return ratio


def _interval(stat: str, values: np.ndarray) -> tuple[float, float, float, float]:
    """Return (estimate, ci_low, ci_high, sd) of ``stat`` over ``values`` (on the working scale)."""
    n = len(values)
    if stat in ("min", "max"):
        est = float(values.min() if stat == "min" else values.max())
        return est, float(values.min()), float(values.max()), float(values.std(ddof=1)) if n > 1 else 0.0
    if stat == "median":
        est = float(np.median(values))
        if n < 3 or np.ptp(values) == 0:
            return est, (est if np.ptp(values) == 0 else -math.inf), (est if np.ptp(values) == 0 else math.inf), 0.0
        boot = stats.bootstrap(
            (values,), np.median, confidence_level=CONFIDENCE, method="percentile",
            n_resamples=4999, random_state=np.random.default_rng(0),
        )
        return est, float(boot.confidence_interval.low), float(boot.confidence_interval.high), float(values.std(ddof=1))
    return mean_interval(values)


def mean_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, 95 % t-interval low, high, sd) of ``values``; the interval is unbounded below two values."""
    n = len(values)
    est = float(values.mean())
    if n < 2:
        return est, -math.inf, math.inf, 0.0
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return est, est - half, est + half, sd


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.3g}"


def judge_condition(name: str, condition: Condition, per_seed: list[dict[str, float]]) -> ConditionResult:
    values = operand_values(condition, per_seed)
    n = len(values)
    log_scale = condition.stat == "geomean"
    if log_scale:
        if not np.all(values > 0):
            raise ValueError(f"geomean({condition.operand_text}) needs positive values (found {values.min():.3g})")
        values = np.log(values)
    est, low, high, sd = _interval(condition.stat, values)
    exact = condition.stat in ("min", "max")

    def to_scale(x: float) -> float:
        return math.exp(x) if log_scale and math.isfinite(x) else (0.0 if log_scale and x == -math.inf else x)

    # Compare on the working (log) scale so thresholds and intervals agree.
    def scale(t: float) -> float:
        return math.log(t) if log_scale else t

    if exact:
        # the extreme itself decides: max(x) < c holds iff every seed has x < c
        low_check = high_check = est
    else:
        low_check, high_check = low, high
    if condition.op == "between":
        lo, hi = scale(condition.low), scale(condition.high)
        if exact:
            vmin, vmax = float(values.min()), float(values.max())
            verdict = "supported" if lo <= vmin and vmax <= hi else "refuted"
        elif lo <= low_check and high_check <= hi:
            verdict = "supported"
        elif high_check < lo or low_check > hi:
            verdict = "refuted"
        else:
            verdict = "inconclusive"
        threshold = (lo + hi) / 2
        target = f"in [{_fmt(condition.low)}, {_fmt(condition.high)}]"
    else:
        t = scale(condition.threshold)
        holds = {
            "<": lambda v: v < t, "<=": lambda v: v <= t, ">": lambda v: v > t, ">=": lambda v: v >= t,
        }[condition.op]
        if holds(low_check) and holds(high_check):
            verdict = "supported"
        elif not holds(low_check) and not holds(high_check):
            verdict = "refuted"
        else:
            verdict = "inconclusive"
        threshold = t
        target = f"{condition.op} {_fmt(condition.threshold)}"

    p_value = None
    effect = None
    if not exact and n >= 2 and sd > 0:
        effect = (est - threshold) / sd
        if condition.stat in ("mean", "geomean") and condition.op != "between":
            alternative = "greater" if condition.op in (">", ">=") else "less"
            p_value = float(stats.ttest_1samp(values, threshold, alternative=alternative).pvalue)

    est_s, low_s, high_s = to_scale(est), to_scale(low), to_scale(high)
    label = f"{condition.stat}({condition.operand_text})"
    if exact:
        reason = f"{label} = {_fmt(est_s)} over {n} seeds, needs {target}"
    else:
        reason = f"{label} = {_fmt(est_s)} [95% CI {_fmt(low_s)}, {_fmt(high_s)}], n={n}, needs {target}"
    return ConditionResult(name, condition.text, verdict, est_s, low_s, high_s, n, p_value, effect, reason)


def combine(results: list[ConditionResult]) -> str:
    verdicts = {r.verdict for r in results}
    if verdicts == {"supported"}:
        return "supported"
    if verdicts == {"refuted"}:
        return "refuted"
    if {"supported", "refuted"} <= verdicts:
        return "mixed"
    return "inconclusive"


def judge(conditions: list[tuple[str, Condition]], per_seed: list[dict[str, float]]) -> Verdict:
    """Judge every named condition on the per-seed metrics and combine them."""
    results = [judge_condition(name, cond, per_seed) for name, cond in conditions]
    verdict = combine(results)
    if len(results) == 1:
        reason = results[0].reason
    else:
        parts = [f"{r.name}: {r.verdict}" for r in results]
        reason = "; ".join(parts)
    return Verdict(verdict, reason, tuple(results), len(per_seed))
