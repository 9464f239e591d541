"""The verdict-rule language: a tiny grammar, parsed by hand (never ``eval``).

A condition says what must hold across seeds for the claim to hold in one setting::

    mean(acc_bn - acc_plain) > 0.01         # paired difference, t-interval
    geomean(steps_plain / steps_bn) >= 1.2  # per-seed ratio, t-interval on logs
    median(gap) < 0                         # bootstrap interval of the median
    max(max_abs_error) < 1e-6               # exact: every seed must satisfy it
    mean(acc_affine - acc_plain) between -0.01 and 0.01   # equivalence

Grammar::

    condition  := STAT "(" operand ")" ( OP NUMBER | "between" NUMBER "and" NUMBER )
    operand    := NAME | NAME "-" NAME | NAME "/" NAME
    STAT       := mean | median | geomean | min | max
    OP         := "<" | "<=" | ">" | ">="
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

STATS = ("mean", "median", "geomean", "min", "max")
OPS = ("<", "<=", ">", ">=")

_TOKEN = re.compile(
    r"\s*(?:(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|<|>)|(?P<punct>[()\-/]))"
)


class RuleSyntaxError(ValueError):
    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.message, self.offset = message, offset


@dataclass(frozen=True)
class Condition:
    """One parsed condition. ``op`` is one of OPS or "between" (then ``low``/``high``)."""

    text: str
    stat: str
    left: str
    combine: str | None  # None, "-" or "/"
    right: str | None
    op: str
    threshold: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (self.left,) if self.right is None else (self.left, self.right)

    @property
    def operand_text(self) -> str:
        return self.left if self.right is None else f"{self.left} {self.combine} {self.right}"


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos, end = [], 0, len(text.rstrip())
    while pos < end:
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise RuleSyntaxError(f"unexpected character {text[pos:pos + 64].lstrip()[:1]!r}", pos)
        kind = match.lastgroup
        value = match.group(kind)
        out.append((kind, value, match.start(kind)))
        pos = match.end()
    return out


def parse_condition(text: str) -> Condition:
    """Parse one condition; raise RuleSyntaxError (with a character offset) when it is not valid."""
    tokens = _tokens(text)
    position = 0

    def peek() -> tuple[str, str, int]:
        return tokens[position] if position < len(tokens) else ("end", "end of rule", len(text))

    def take(kind: str, value: str | None = None, expected: str = "") -> str:
        nonlocal position
        got_kind, got_value, offset = peek()
        if got_kind != kind or (value is not None and got_value != value):
            raise RuleSyntaxError(f"expected {expected or value or kind} (found {got_value!r})", offset)
        position += 1
        return got_value

    def number(what: str) -> float:
        return float(take("number", expected=what))

    stat = take("name", expected="a statistic (" + ", ".join(STATS) + ")")
    if stat not in STATS:
        raise RuleSyntaxError(f"unknown statistic (found {stat!r}); expected one of {', '.join(STATS)}", 0)
    take("punct", "(", expected="'('")
    left = take("name", expected="a metric name")
    combine = right = None
    if peek()[0] == "punct" and peek()[1] in "-/":
        combine = take("punct")
        right = take("name", expected="a metric name")
    take("punct", ")", expected="')'")
    kind, value, offset = peek()
    if kind == "op":
        position += 1
        condition = Condition(text, stat, left, combine, right, value, threshold=number("a number"))
    elif kind == "name" and value == "between":
        position += 1
        low = number("a number")
        take("name", "and", expected="'and'")
        high = number("a number")
        if not low < high:
            raise RuleSyntaxError(f"'between' needs low < high (found {low:g} and {high:g})", offset)
        condition = Condition(text, stat, left, combine, right, "between", low=low, high=high)
    else:
        raise RuleSyntaxError(f"expected a comparison ({', '.join(OPS)} or between) (found {value!r})", offset)
    if position != len(tokens):
        raise RuleSyntaxError(f"unexpected text after the rule (found {peek()[1]!r})", peek()[2])
    if stat == "geomean" and combine == "-":
        raise RuleSyntaxError("geomean needs a positive operand: a metric or a ratio a / b (found a difference)", 0)
    if stat == "geomean":  # a geometric mean is positive: a bound at or below 0 could never be judged
        bounds = (condition.threshold,) if condition.op != "between" else (condition.low, condition.high)
        if any(b <= 0 for b in bounds):
            raise RuleSyntaxError("a geomean is always positive, so it needs positive thresholds (found "
                                  + " and ".join(f"{b:g}" for b in bounds) + ")", offset)
    if any(not math.isfinite(b) for b in (condition.threshold, condition.low, condition.high) if b is not None):
        raise RuleSyntaxError("thresholds must be finite numbers (found one too large for a float)", offset)
    return condition


@dataclass(frozen=True)
class NamedCondition:
    """A condition of a claim's rule with its name and, for a headline condition, the words it tests."""

    name: str
    condition: Condition
    tests: str | None = None  # a fragment of the claim's quote (required for headline conditions)

    @property
    def text(self) -> str:
        return self.condition.text


def same_condition(a: str, b: str) -> bool:
    """Two ``holds`` texts state the same test (they differ at most in whitespace)."""
    return "".join(a.split()) == "".join(b.split())
