"""The rule grammar and the statistics that turn per-seed metrics into verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bnclaims.rules import NamedCondition, RuleSyntaxError, parse_condition
from bnclaims.verdict import combine, judge, judge_condition


def seeds(**columns):
    n = len(next(iter(columns.values())))
    return [{k: float(v[i]) for k, v in columns.items()} for i in range(n)]


@pytest.mark.parametrize("text, fields", [
    ("mean(x) > 0", dict(stat="mean", left="x", right=None, op=">", threshold=0.0)),
    ("geomean(a / b) >= 1.2", dict(stat="geomean", left="a", combine="/", right="b", op=">=", threshold=1.2)),
    ("median(a - b) < -1e-3", dict(stat="median", left="a", combine="-", right="b", op="<", threshold=-1e-3)),
    ("max(err)<=1e-6", dict(stat="max", left="err", op="<=", threshold=1e-6)),
    ("mean(d) between -0.01 and 0.01", dict(op="between", low=-0.01, high=0.01)),
])
def test_parse(text, fields):
    condition = parse_condition(text)
    for key, value in fields.items():
        assert getattr(condition, key) == value


@pytest.mark.parametrize("text, message", [
    ("mean(x) >", "expected a number (found 'end of rule')"),
    ("mean(x) = 1", "unexpected character '='"),
    ("avg(x) > 1", "unknown statistic (found 'avg')"),
    ("mean(x + y) > 1", "unexpected character '+'"),
    ("mean(x) > 1 and 2", "unexpected text after the rule (found 'and')"),
    ("mean(x) between 2 and 1", "'between' needs low < high"),
    ("geomean(a - b) > 1", "geomean needs a positive operand"),
    ("__import__('os')", "unexpected character"),
    ("__import__(os) > 1", "unknown statistic (found '__import__')"),
    ("mean(x.__class__) > 1", "unexpected character '.'"),
])
def test_parse_errors(text, message):
    with pytest.raises(RuleSyntaxError) as info:
        parse_condition(text)
    assert message in info.value.message


def test_mean_uses_t_interval_and_one_sided_p():
    values = np.array([0.3, 0.5, 0.1, 0.4, 0.2, 0.6, 0.35, 0.45])
    r = judge_condition("c", parse_condition("mean(x) > 0.1"), seeds(x=values))
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    assert r.estimate == pytest.approx(values.mean())
    assert (r.ci_low, r.ci_high) == pytest.approx((values.mean() - half, values.mean() + half))
    assert r.p_value == pytest.approx(stats.ttest_1samp(values, 0.1, alternative="greater").pvalue)
    assert r.effect_size == pytest.approx((values.mean() - 0.1) / values.std(ddof=1))
    assert r.verdict == "supported"


def test_three_outcomes():
    rng = np.random.default_rng(0)
    clear = rng.normal(1.0, 0.1, 20)
    assert judge_condition("c", parse_condition("mean(x) > 0"), seeds(x=clear)).verdict == "supported"
    assert judge_condition("c", parse_condition("mean(x) < 0"), seeds(x=clear)).verdict == "refuted"
    noisy = rng.normal(0.0, 1.0, 5)
    assert judge_condition("c", parse_condition("mean(x) > 0"), seeds(x=noisy)).verdict == "inconclusive"


def test_paired_difference_and_ratio():
    a = np.array([10.0, 20, 30, 40, 50])
    b = a * np.array([2.0, 2.1, 1.9, 2.05, 1.95])
    diff = judge_condition("c", parse_condition("mean(b - a) > 0"), seeds(a=a, b=b))
    assert diff.estimate == pytest.approx((b - a).mean())
    ratio = judge_condition("c", parse_condition("geomean(b / a) > 1.5"), seeds(a=a, b=b))
    assert ratio.estimate == pytest.approx(stats.gmean(b / a))
    assert ratio.ci_low < ratio.estimate < ratio.ci_high
    assert ratio.verdict == "supported"


def test_exact_stats_need_every_seed():
    err = np.array([1e-9, 2e-9, 5e-7])
    assert judge_condition("c", parse_condition("max(e) < 1e-6"), seeds(e=err)).verdict == "supported"
    assert judge_condition("c", parse_condition("max(e) < 1e-7"), seeds(e=err)).verdict == "refuted"
    assert judge_condition("c", parse_condition("min(e) > 0"), seeds(e=err)).verdict == "supported"
    # one seed is enough for an exact check
    assert judge_condition("c", parse_condition("max(e) < 1"), seeds(e=[0.5])).verdict == "supported"


def test_equivalence_between():
    d = np.array([0.001, -0.002, 0.0005, 0.0015, -0.001, 0.0])
    assert judge_condition("c", parse_condition("mean(d) between -0.01 and 0.01"), seeds(d=d)).verdict == "supported"
    assert judge_condition("c", parse_condition("mean(d) between 0.1 and 0.2"), seeds(d=d)).verdict == "refuted"
    wide = np.array([0.02, -0.03, 0.01, -0.02])
    assert judge_condition("c", parse_condition("mean(d) between -0.01 and 0.01"),
                           seeds(d=wide)).verdict == "inconclusive"


def test_median_bootstrap_is_deterministic():
    values = np.random.default_rng(1).normal(1, 1, 15)
    a = judge_condition("c", parse_condition("median(x) > 0"), seeds(x=values))
    b = judge_condition("c", parse_condition("median(x) > 0"), seeds(x=values))
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert a.ci_low <= np.median(values) <= a.ci_high


def test_one_seed_mean_is_inconclusive():
    r = judge_condition("c", parse_condition("mean(x) > 0"), seeds(x=[5.0]))
    assert r.verdict == "inconclusive"


def test_zero_variance_is_decisive():
    r = judge_condition("c", parse_condition("mean(x) > 0"), seeds(x=[1.0, 1.0, 1.0]))
    assert r.verdict == "supported"
    assert r.effect_size is None


def test_ratio_with_zero_denominator_raises():
    with pytest.raises(ValueError, match="not finite"):
        judge_condition("c", parse_condition("geomean(a / b) > 1"), seeds(a=[1.0, 2.0], b=[1.0, 0.0]))


@pytest.mark.parametrize("verdicts, expected", [
    (["supported"], "supported"),
    (["supported", "supported"], "supported"),
    (["refuted", "refuted"], "refuted"),
    (["supported", "refuted"], "mixed"),
    (["supported", "refuted", "inconclusive"], "mixed"),
    (["supported", "inconclusive"], "inconclusive"),
    (["refuted", "inconclusive"], "refuted"),
    (["refuted", "inconclusive", "inconclusive"], "refuted"),
    (["refuted"], "refuted"),
    (["inconclusive"], "inconclusive"),
    (["inconclusive", "inconclusive"], "inconclusive"),
    (["supported", "error"], "error"),
    (["error"], "error"),
    ([], "error"),
])
def test_combine(verdicts, expected):
    """Every row of the combine table (DESIGN.md "Claim file")."""
    class R:
        def __init__(self, v):
            self.verdict = v

    assert combine([R(v) for v in verdicts]) == expected


def test_judge_mixed_reason_names_conditions():
    per_seed = seeds(x=[1.0, 1.1, 0.9, 1.05], y=[-1.0, -1.1, -0.9, -1.05])
    v = judge([("x positive", parse_condition("mean(x) > 0")), ("y positive", parse_condition("mean(y) > 0"))],
              per_seed)
    assert v.verdict == "mixed"
    assert v.reason == "x positive: supported; y positive: refuted"
    assert v.headline.name == "x positive"


def test_family_wise_level_matches_a_hand_computed_bonferroni_interval():
    values = [0.10, 0.25, 0.05, 0.30, 0.20, 0.15]
    per_seed = seeds(x=values, y=values, z=values)
    conditions = [NamedCondition("a", parse_condition("mean(x) > 0")),
                  NamedCondition("b", parse_condition("mean(y) > 0")),
                  NamedCondition("exact", parse_condition("max(z) < 1"))]  # exact: not counted
    v = judge(conditions, per_seed)
    # by hand: k = 2 interval conditions, level 1 - 0.05/2 = 0.975, two-sided: the t quantile 1 - 0.025/2 = 0.9875 at 5 dof
    assert v.level == 0.975
    mean, sd, n = 0.175, float(np.std(values, ddof=1)), 6
    half = 3.1633814497 * sd / math.sqrt(n)  # t.ppf(0.9875, 5), from a table
    assert v.conditions[0].ci_low == pytest.approx(mean - half, rel=1e-9)
    assert v.conditions[0].ci_high == pytest.approx(mean + half, rel=1e-9)
    assert v.conditions[0].level == 0.975
    assert "97.5% CI" in v.conditions[0].reason
    # a single interval condition keeps 95 %
    single = judge([NamedCondition("a", parse_condition("mean(x) > 0"))], per_seed)
    assert single.level == 0.95
    assert single.conditions[0].ci_low == pytest.approx(mean - 2.5705818356 * sd / math.sqrt(n), rel=1e-9)


def test_bonferroni_can_turn_a_95_percent_call_inconclusive():
    # mean 1, sd 1, n 10: the 95 % interval excludes 0.3 but the 99.17 % one (k = 6) does not
    values = [1 + d for d in (-1.5, -1, -0.5, 0, 0, 0, 0, 0.5, 1, 1.5)]
    per_seed = seeds(x=values)
    one = judge([NamedCondition("a", parse_condition("mean(x) > 0.3"))], per_seed)
    six = judge([NamedCondition(f"c{i}", parse_condition(f"mean(x) > {0.3 + i * 1e-9}")) for i in range(6)], per_seed)
    assert one.verdict == "supported"
    assert six.verdict == "inconclusive"


@pytest.mark.parametrize("beyond_rule", ["mean(y) > 0", "mean(y) < 0", "mean(y) > 100", "mean(y / z) > 1"])
def test_beyond_never_changes_the_verdict(beyond_rule):
    per_seed = seeds(x=[1.0, 1.1, 0.9, 1.05], y=[-1.0, -1.1, -0.9, -1.05], z=[0.0, 1.0, 1.0, 1.0])
    headline = [NamedCondition("x positive", parse_condition("mean(x) > 0"), "x")]
    alone = judge(headline, per_seed)
    with_beyond = judge(headline, per_seed, [NamedCondition("other", parse_condition(beyond_rule))])
    assert with_beyond.verdict == alone.verdict == "supported"
    assert with_beyond.conditions == alone.conditions
    assert with_beyond.level == alone.level
    assert len(with_beyond.beyond) == 1 and with_beyond.beyond[0].level == 0.95


def test_a_beyond_condition_that_cannot_be_judged_is_shown_as_an_error():
    per_seed = seeds(x=[1.0, 1.1, 0.9], y=[1.0, 2.0, 3.0], z=[0.0, 1.0, 1.0])
    v = judge([NamedCondition("x", parse_condition("mean(x) > 0"))], per_seed,
              [NamedCondition("ratio", parse_condition("mean(y / z) > 1"))])
    assert v.verdict == "supported"
    assert v.beyond[0].verdict == "error"
    assert "division by zero" in v.beyond[0].reason


@pytest.mark.parametrize("values, message", [
    ([1.0, float("nan"), 2.0], "x is not finite in run 2"),
    ([1.0, float("inf"), 2.0], "x is not finite in run 2"),
    ([1e308, 1e308, -1e308], "is not finite"),
])
def test_non_finite_inputs_or_intermediates_are_errors_not_verdicts(values, message):
    per_seed = seeds(x=values, y=[-1e308, -1e308, 1e308])
    rule = "mean(x - y) > 0" if values[0] == 1e308 else "mean(x) > 0"
    with pytest.raises(ValueError, match=message):
        judge([NamedCondition("x", parse_condition(rule))], per_seed)


def test_huge_finite_values_whose_spread_overflows_are_errors():
    per_seed = seeds(x=[1e308, -1e308, 1e308])
    with pytest.raises(ValueError, match="not finite"):
        judge([NamedCondition("x", parse_condition("mean(x) > 0"))], per_seed)


@pytest.mark.parametrize("text", ["geomean(x) > 0", "geomean(a / b) >= -1", "geomean(x) between 0 and 2",
                                  "mean(x) > 1e309"])
def test_rules_that_could_never_be_judged_are_refused(text):
    with pytest.raises(RuleSyntaxError):
        parse_condition(text)
