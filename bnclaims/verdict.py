"""Per-seed metrics -> statistics -> a verdict.

Each condition of a claim's rule is judged on the per-seed values of its operand:

* ``mean``    : t-interval of the mean (scipy.stats.t), one-sided t-test p-value;
* ``geomean`` : the same on log values, reported back on the ratio scale;
* ``median``  : percentile-bootstrap interval (scipy.stats.bootstrap, fixed seed);
* ``min``/``max``: exact — the extreme over seeds is compared, no interval is needed.

A condition is *supported* when the whole interval satisfies the comparison, *refuted*
when the whole interval violates it, and *inconclusive* otherwise (the evidence cannot
tell at this number of seeds).

Only the headline conditions (``rule.conditions``: what the quoted sentence asserts) decide
the verdict. They share a 95 % family-wise level: with k of them using an interval, each
interval is at level 1 - 0.05/k (Bonferroni; ``min``/``max`` are exact and not counted).
They combine as follows:

* all supported -> ``supported`` (Right);
* all refuted, or refuted with the rest inconclusive -> ``refuted`` (Wrong);
* some supported and some refuted -> ``mixed`` (Partly right);
* supported with the rest inconclusive, or all inconclusive -> ``inconclusive`` (Not settled here);
* a headline condition that cannot be judged (non-finite values, a ratio dividing by 0) -> ``error``.

The ``beyond`` conditions (other modes, scales, counterfactuals, diagnostic sweeps) are
judged the same way, each at 95 %, and shown beside the verdict; they never change it.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bnclaims.rules import Condition, NamedCondition

VERDICTS = ("supported", "refuted", "mixed", "inconclusive", "error")
CONFIDENCE = 0.95
ANSWER = {  # how each verdict reads as an answer to the quoted sentence
    "supported": "Right",
    "refuted": "Wrong",
    "mixed": "Partly right",
    "inconclusive": "Not settled here",
    "error": "No verdict",
}
EXACT_STATS = ("min", "max")


def family_level(conditions) -> float:
    """The level of each headline interval: 1 - 0.05/k over the k conditions that use an interval."""
    k = sum(1 for c in conditions if _condition_of(c).stat not in EXACT_STATS)
    return 1 - (1 - CONFIDENCE) / max(k, 1)


def _condition_of(c) -> Condition:
    return c.condition if isinstance(c, NamedCondition) else c


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
    level: float = CONFIDENCE  # confidence level of the interval (family-wise share for headline conditions)
    tests: str | None = None  # the words of the quote this condition tests

    @property
    def exact(self) -> bool:
        return self.text.lstrip().startswith(EXACT_STATS)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "rule": self.text,
            "tests": self.tests,
            "verdict": self.verdict,
            "estimate": self.estimate,
            "ci": [self.ci_low, self.ci_high],
            "level": None if self.exact else self.level,
            "n": self.n,
            "p_value": self.p_value,
            "effect_size": self.effect_size,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    conditions: tuple[ConditionResult, ...]  # the headline conditions: they decide the verdict
    n_seeds: int
    beyond: tuple[ConditionResult, ...] = ()  # judged and shown, never part of the verdict
    level: float = CONFIDENCE  # the level of each headline interval

    @property
    def answer(self) -> str:
        return ANSWER[self.verdict]

    @property
    def headline(self) -> ConditionResult | None:
        """The condition that best explains the verdict (first one agreeing with it)."""
        for c in self.conditions:
            if c.verdict == self.verdict:
                return c
        return self.conditions[0] if self.conditions else None


def _metric(per_seed: list[dict[str, float]], name: str) -> np.ndarray:
    values = np.array([m[name] for m in per_seed], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        bad = int(np.argmax(~np.isfinite(values)))
        raise ValueError(f"{name} is not finite in run {bad + 1} (found {values[bad]})")
    return values


def operand_values(condition: Condition, per_seed: list[dict[str, float]]) -> np.ndarray:
    """Per-seed values of the condition's operand; ValueError if any input or result is not finite."""
    left = _metric(per_seed, condition.left)
    if condition.right is None:
        return left
    right = _metric(per_seed, condition.right)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        values = left - right if condition.combine == "-" else left / right
    if not np.all(np.isfinite(values)):
        bad = int(np.argmax(~np.isfinite(values)))
        why = "division by zero" if condition.combine == "/" and right[bad] == 0 else "overflow"
        raise ValueError(f"{condition.operand_text} is not finite in run {bad + 1} ({why})")
    return values


def _interval(stat: str, values: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float, float, float]:
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
            (values,), np.median, confidence_level=level, method="percentile",
            n_resamples=4999, random_state=np.random.default_rng(0),
        )
        return est, float(boot.confidence_interval.low), float(boot.confidence_interval.high), float(values.std(ddof=1))
    return mean_interval(values, level)


def mean_interval(values: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, t-interval low, high at ``level``, sd) of ``values``; unbounded below two values."""
    n = len(values)
    with np.errstate(over="ignore", invalid="ignore"):
        est = float(values.mean())
        if n < 2:
            return est, -math.inf, math.inf, 0.0
        sd = float(values.std(ddof=1))
    half = _t_quantile(level, n - 1) * sd / math.sqrt(n)
    return est, est - half, est + half, sd


@functools.lru_cache(maxsize=1024)
def _t_quantile(level: float, dof: int) -> float:
    """The two-sided ``level`` quantile of Student's t (cached: a series asks it once per point)."""
    return float(stats.t.ppf(0.5 + level / 2, dof))


def _level_text(level: float) -> str:
    return f"{100 * level:.4g}%"


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.3g}"


def judge_condition(name: str, condition: Condition, per_seed: list[dict[str, float]],
                    level: float = CONFIDENCE, tests: str | None = None) -> ConditionResult:
    """Judge one condition with intervals at ``level``; ValueError when it cannot be judged."""
    values = operand_values(condition, per_seed)
    n = len(values)
    log_scale = condition.stat == "geomean"
    if log_scale:
        if not np.all(values > 0):
            raise ValueError(f"geomean({condition.operand_text}) needs positive values (found {values.min():.3g})")
        values = np.log(values)
    est, low, high, sd = _interval(condition.stat, values, level)
    exact = condition.stat in EXACT_STATS
    unbounded_ok = n < 2 or (condition.stat == "median" and n < 3)  # too few seeds for a finite interval
    if not (math.isfinite(est) and math.isfinite(sd)) or (not unbounded_ok and not (math.isfinite(low) and math.isfinite(high))):
        raise ValueError(f"{condition.stat}({condition.operand_text}) is not finite (the values overflow a float)")

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
            with warnings.catch_warnings():  # nearly identical seeds: scipy warns of precision loss; the
                warnings.simplefilter("ignore", RuntimeWarning)  # p-value is shown, the interval decides
                p_value = float(stats.ttest_1samp(values, threshold, alternative=alternative).pvalue)

    est_s, low_s, high_s = to_scale(est), to_scale(low), to_scale(high)
    label = f"{condition.stat}({condition.operand_text})"
    if exact:
        reason = f"{label} = {_fmt(est_s)} over {n} seeds, needs {target}"
    else:
        reason = f"{label} = {_fmt(est_s)} [{_level_text(level)} CI {_fmt(low_s)}, {_fmt(high_s)}], n={n}, needs {target}"
    return ConditionResult(name, condition.text, verdict, est_s, low_s, high_s, n, p_value, effect, reason,
                           level, tests)


def combine(results: list[ConditionResult]) -> str:
    """The verdict of the headline conditions (see the module docstring for the table)."""
    verdicts = {r.verdict for r in results}
    if not verdicts or "error" in verdicts:
        return "error"
    if verdicts == {"supported"}:
        return "supported"
    if {"supported", "refuted"} <= verdicts:
        return "mixed"
    if "refuted" in verdicts:
        return "refuted"  # refuted, with the rest (if any) inconclusive
    return "inconclusive"  # supported with the rest inconclusive, or all inconclusive


def _error_result(item: NamedCondition, n: int, message: str) -> ConditionResult:
    nan = math.nan
    return ConditionResult(item.name, item.text, "error", nan, nan, nan, n, None, None,
                           f"could not be judged: {message}", CONFIDENCE, item.tests)


def judge(conditions, per_seed: list[dict[str, float]], beyond=()) -> Verdict:
    """Judge the headline ``conditions`` at the family-wise level and ``beyond`` at 95 %.

    ``conditions``/``beyond`` are NamedConditions (or ``(name, Condition)`` pairs). A headline
    condition that cannot be judged raises ValueError (the claim is an error); a ``beyond`` one
    is reported with verdict "error" and the reason.
    """
    conditions = [_named(c) for c in conditions]
    level = family_level(conditions)
    results = [judge_condition(c.name, c.condition, per_seed, level, c.tests) for c in conditions]
    verdict = combine(results)
    extra = []
    for c in map(_named, beyond):
        try:
            extra.append(judge_condition(c.name, c.condition, per_seed, CONFIDENCE, c.tests))
        except (ValueError, ZeroDivisionError, FloatingPointError) as e:
            extra.append(_error_result(c, len(per_seed), str(e)))
    if len(results) == 1:
        reason = results[0].reason
    else:
        reason = "; ".join(f"{r.name}: {r.verdict}" for r in results)
    return Verdict(verdict, reason, tuple(results), len(per_seed), tuple(extra), level)


def _named(c) -> NamedCondition:
    if isinstance(c, NamedCondition):
        return c
    name, condition = c
    return NamedCondition(name, condition)
