"""Policy rules over a report's dotted metric names, and the gate that evaluates them.

Grammar (a rule is one comparison)::

    rule    := expr ("<=" | "<" | ">=" | ">" | "==" | "!=") expr
    expr    := term (("+" | "-") term)*            spaces around a minus: names may hold "-"
    term    := factor (("*" | "/") factor)*
    factor  := number | metric | "-" factor | "(" expr ")"
             | ("upper" | "lower" | "value") "(" metric ")"    confidence bound or estimate
             | "baseline" ["(" expr ")"]           the baseline run; bare: the rule's left side
    metric  := auditor.name.parts  |  `any.name<with>=symbols`

Examples: ``fairness.sex.equalized_odds_difference <= 0.10``,
``upper(privacy.lira.tpr_at_0.001_fpr) <= 0.01``,
``privacy.empirical_epsilon <= privacy.claimed_epsilon``,
``fairness.sex.equalized_odds_difference <= baseline + 0.02``.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from dataclasses import dataclass
from typing import Callable

from trustlab.audit.report import Metric
from trustlab.errors import ConfigError

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
    "==": operator.eq, "!=": operator.ne}
ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
BOUNDS = ("value", "upper", "lower")
RULE_STATUSES = ("passed", "failed", "errored", "skipped")
TOKEN = re.compile(r"""\s*(?:
    (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | `(?P<quoted>[^`]+)`
  | (?P<name>[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*)
  | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\))
)""", re.VERBOSE)
METRIC = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-<>=+]+)+$")


class RuleError(ConfigError):
    """A rule that does not parse (at spec time) or cannot be evaluated (a missing metric)."""


class NoBaseline(Exception):
    """The rule compares with a baseline run and none was given: the rule is skipped."""


@dataclass(frozen=True)
class Env:
    """What rules are evaluated against: this run's metrics and, optionally, a baseline's."""

    metrics: dict[str, Metric]
    baseline: dict[str, Metric] | None = None


@dataclass(frozen=True)
class Num:
    value: float

    def evaluate(self, env: Env) -> float:
        return self.value

    def refs(self) -> list["Ref"]:
        return []

    def __str__(self) -> str:
        return f"{self.value:g}"


@dataclass(frozen=True)
class Ref:
    """A metric's estimate, or its upper/lower confidence bound."""

    metric: str
    bound: str = "value"

    def evaluate(self, env: Env) -> float:
        if self.metric not in env.metrics:
            close = difflib.get_close_matches(self.metric, env.metrics, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                f"; the run has {len(env.metrics)} metrics (see its report)"
            raise RuleError(f"metric {self.metric!r} is not in the run{hint}")
        metric = env.metrics[self.metric]
        value = {"value": metric.value, "upper": metric.ci_high, "lower": metric.ci_low}[self.bound]
        if value is None:
            raise RuleError(f"{self.bound}({self.metric}): the metric has no confidence interval; "
                            "gate on its value instead")
        return float(value)

    def refs(self) -> list["Ref"]:
        return [self]

    def __str__(self) -> str:
        return self.metric if self.bound == "value" else f"{self.bound}({self.metric})"


@dataclass(frozen=True)
class Baseline:
    """``expr`` evaluated on the baseline run's metrics (bare ``baseline``: the left side)."""

    expr: "Node"

    def evaluate(self, env: Env) -> float:
        if env.baseline is None:
            raise NoBaseline("no baseline run given (--baseline RUN_ID)")
        return self.expr.evaluate(Env(env.baseline))

    def refs(self) -> list[Ref]:
        return self.expr.refs()

    def __str__(self) -> str:
        return f"baseline({self.expr})"


@dataclass(frozen=True)
class Neg:
    operand: "Node"

    def evaluate(self, env: Env) -> float:
        return -self.operand.evaluate(env)

    def refs(self) -> list[Ref]:
        return self.operand.refs()

    def __str__(self) -> str:
        return f"-{self.operand}"


@dataclass(frozen=True)
class BinOp:
    op: str
    left: "Node"
    right: "Node"

    def evaluate(self, env: Env) -> float:
        return ARITHMETIC[self.op](self.left.evaluate(env), self.right.evaluate(env))

    def refs(self) -> list[Ref]:
        return self.left.refs() + self.right.refs()

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


Node = Num | Ref | Baseline | Neg | BinOp


@dataclass
class RuleResult:
    """The outcome of one rule: status, the measured left side, the bound it was held to."""

    rule: str
    name: str
    status: str
    measured: float | None = None
    bound: float | None = None
    metric: str | None = None
    ci: tuple[float | None, float | None] | None = None
    message: str = ""

    def to_dict(self) -> dict:
        return {"rule": self.rule, "name": self.name, "status": self.status,
                "measured": self.measured, "bound": self.bound, "metric": self.metric,
                "ci": list(self.ci) if self.ci else None, "message": self.message}


@dataclass(frozen=True)
class Rule:
    """A parsed rule: ``left op right``; ``text`` is what the user wrote."""

    text: str
    left: Node
    op: str
    right: Node
    name: str = ""

    def metrics(self) -> list[str]:
        """Every metric name the rule reads (this run's or the baseline's)."""
        return list(dict.fromkeys(r.metric for r in self.left.refs() + self.right.refs()))

    @property
    def primary(self) -> str | None:
        """The metric the rule is about: the first one on its left side."""
        refs = self.left.refs() or self.right.refs()
        return refs[0].metric if refs else None

    def evaluate(self, metrics: dict[str, Metric],
                 baseline: dict[str, Metric] | None = None) -> RuleResult:
        """Pass, fail, error (missing metric, no CI, NaN) or skip (no baseline given)."""
        result = RuleResult(rule=self.text, name=self.name or self.text, status="errored",
                            metric=self.primary)
        if self.primary in metrics:
            found = metrics[self.primary]
            result.ci = (found.ci_low, found.ci_high) if found.ci_low is not None else None
        env = Env(metrics, baseline)
        try:
            result.measured = self.left.evaluate(env)
            result.bound = self.right.evaluate(env)
        except NoBaseline as exc:
            result.status, result.message = "skipped", str(exc)
            return result
        except (RuleError, ZeroDivisionError) as exc:
            result.message = str(exc)
            return result
        if math.isnan(result.measured) or math.isnan(result.bound):
            result.message = "the metric is NaN (the auditor could not estimate it)"
            return result
        passed = COMPARISONS[self.op](result.measured, result.bound)
        result.status = "passed" if passed else "failed"
        result.message = (f"{self.left} = {result.measured:.6g} "
                          f"{self.op if passed else 'violates ' + self.op} {result.bound:.6g}")
        return result


def parse_rule(text: str, name: str | None = None) -> Rule:
    """Parse one rule; a ``RuleError`` names the offending token and what was expected."""
    parser = _Parser(text)
    left = parser.expr()
    parser.left = left
    op = parser.next_token()
    if op not in COMPARISONS:
        raise RuleError(f"rule {text!r}: expected a comparison "
                        f"({', '.join(COMPARISONS)}) after {left}, got {op or 'the end'!r}")
    right = parser.expr()
    if parser.peek() is not None:
        raise RuleError(f"rule {text!r}: unexpected {parser.peek()!r} after the comparison")
    if not (left.refs() or right.refs()):
        raise RuleError(f"rule {text!r} reads no metric")
    return Rule(text=text, left=left, op=op, right=right, name=name or "")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text.rstrip()):
            match = TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise RuleError(f"rule {text!r}: cannot read {text[position:].strip()!r}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.position = 0
        self.left: Node | None = None  # set once the left side is parsed

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def next_token(self) -> str | None:
        token = self.peek()
        self.position += token is not None
        return token

    def expect(self, token: str) -> None:
        got = self.next_token()
        if got != token:
            raise RuleError(f"rule {self.text!r}: expected {token!r}, got {got or 'the end'!r}")

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.next_token()
            node = BinOp(op, node, self.term())  # type: ignore[arg-type]
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() in ("*", "/"):
            op = self.next_token()
            node = BinOp(op, node, self.factor())  # type: ignore[arg-type]
        return node

    def factor(self) -> Node:
        if self.position >= len(self.tokens):
            raise RuleError(f"rule {self.text!r} ends where a value was expected")
        kind, token = self.tokens[self.position]
        self.position += 1
        if kind == "number":
            return Num(float(token))
        if token == "-":
            return Neg(self.factor())
        if token == "(":
            node = self.expr()
            self.expect(")")
            return node
        if kind == "name" and token in BOUNDS and self.peek() == "(":
            self.expect("(")
            ref = self.metric(self.next_token(), bound=token)
            self.expect(")")
            return ref
        if kind == "name" and token == "baseline":
            if self.peek() != "(":
                if self.left is None:
                    raise RuleError(f"rule {self.text!r}: bare 'baseline' means the left side "
                                    "on the baseline run: put it on the right of the comparison")
                return Baseline(self.left)
            self.expect("(")
            node = self.expr()
            self.expect(")")
            return Baseline(node)
        if kind in ("name", "quoted"):
            return self.metric(token)
        raise RuleError(f"rule {self.text!r}: unexpected {token!r} where a value was expected")

    def metric(self, token: str | None, bound: str = "value") -> Ref:
        if token is None or not METRIC.match(token):
            raise RuleError(f"rule {self.text!r}: {token!r} is not a metric name; metric names "
                            "are dotted, <auditor>.<metric>[.<part>...], e.g. "
                            "performance.test_accuracy")
        return Ref(token, bound)


def evaluate_policy(rules: list[Rule], metrics: dict[str, Metric],
                    baseline: dict[str, Metric] | None = None) -> list[RuleResult]:
    """Evaluate every rule; none stops the others."""
    return [rule.evaluate(metrics, baseline) for rule in rules]
