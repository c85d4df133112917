"""Policy rules: parsing, bounds, baselines, and arithmetic checked against Python itself."""

from __future__ import annotations

import math
import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustlab.audit.policy import COMPARISONS, RuleError, evaluate_policy, parse_rule
from trustlab.audit.report import Metric

METRICS = {"fairness.sex.equalized_odds_difference": Metric(0.08, 0.03, 0.13),
           "robustness.autoattack_linf_0.1.accuracy": Metric(0.55, 0.5, 0.6),
           "privacy.empirical_epsilon": Metric(0.9), "privacy.claimed_epsilon": Metric(1.0),
           "privacy.lira.tpr_at_0.001_fpr": Metric(math.nan),
           "fairness.age>=40.gap": Metric(0.2)}


@pytest.mark.parametrize("rule, status, measured, bound", [
    ("fairness.sex.equalized_odds_difference <= 0.10", "passed", 0.08, 0.10),
    ("upper(fairness.sex.equalized_odds_difference) <= 0.10", "failed", 0.13, 0.10),
    ("lower(robustness.autoattack_linf_0.1.accuracy) >= 0.5", "passed", 0.5, 0.5),
    ("privacy.empirical_epsilon <= privacy.claimed_epsilon", "passed", 0.9, 1.0),
    ("privacy.empirical_epsilon > 2 * privacy.claimed_epsilon - 0.5", "failed", 0.9, 1.5),
    ("`fairness.age>=40.gap` < 0.1", "failed", 0.2, 0.1),
    ("privacy.lira.tpr_at_0.001_fpr <= 0.01", "errored", math.nan, 0.01),
    ("upper(privacy.empirical_epsilon) <= 1", "errored", None, None),
    ("fairness.sex.equalized_odds_differense <= 1", "errored", None, None),
])
def test_rules_on_a_run(rule, status, measured, bound):
    result = parse_rule(rule).evaluate(METRICS)
    assert result.status == status, result.message
    if measured is not None and not math.isnan(measured):
        assert result.measured == pytest.approx(measured) and result.bound == pytest.approx(bound)


def test_failures_carry_the_ci_and_missing_metrics_suggest_names():
    failed = parse_rule("upper(fairness.sex.equalized_odds_difference) <= 0.10").evaluate(METRICS)
    assert failed.ci == (0.03, 0.13) and failed.metric == "fairness.sex.equalized_odds_difference"
    missing = parse_rule("fairness.sex.equalized_odds_differense <= 1").evaluate(METRICS)
    assert "did you mean fairness.sex.equalized_odds_difference" in missing.message


def test_baseline_is_the_left_side_on_the_baseline_run():
    rule = parse_rule("upper(fairness.sex.equalized_odds_difference) <= baseline + 0.02")
    old = {"fairness.sex.equalized_odds_difference": Metric(0.05, 0.0, 0.10)}
    assert rule.evaluate(METRICS).status == "skipped"
    regressed = rule.evaluate(METRICS, baseline=old)
    assert regressed.status == "failed" and regressed.bound == pytest.approx(0.10 + 0.02)
    explicit = parse_rule("privacy.empirical_epsilon <= baseline(privacy.claimed_epsilon)")
    assert explicit.evaluate(METRICS, baseline=METRICS).status == "passed"


@pytest.mark.parametrize("text, says", [
    ("accuracy >= 0.8", "not a metric name"),
    ("performance.acc 0.8", "expected a comparison"),
    ("performance.acc >=", "ends where a value was expected"),
    ("baseline >= performance.acc", "put it on the right"),
    ("upper(performance.acc >= 1", "expected ')'"),
    ("performance.acc >= 1 1", "unexpected '1'"),
    ("1 <= 2", "reads no metric"),
    ("performance.acc >= $", "cannot read '$'"),
])
def test_parse_errors_say_what_is_wrong(text, says):
    with pytest.raises(RuleError) as caught:
        parse_rule(text)
    assert says in str(caught.value)


numbers = st.floats(min_value=-100, max_value=100, allow_nan=False).map(lambda x: round(x, 3))


@st.composite
def expressions(draw, depth=0):
    """A random arithmetic expression over metric ``m.x`` and numbers, as (rule text, python)."""
    if depth > 2 or draw(st.booleans()):
        value = draw(numbers)
        return (f"{value}", f"{value}") if draw(st.booleans()) else ("m.x", "x")
    left, right = draw(expressions(depth + 1)), draw(expressions(depth + 1))
    op = draw(st.sampled_from(["+", "-", "*"]))
    paren = draw(st.booleans())
    text, python = f"{left[0]} {op} {right[0]}", f"{left[1]} {op} {right[1]}"
    return (f"({text})", f"({python})") if paren else (text, python)


@settings(max_examples=200, deadline=None)
@given(expressions(), st.sampled_from(sorted(COMPARISONS)), numbers, numbers)
def test_arithmetic_and_comparisons_match_python(expression, op, x, bound):
    text, python = expression
    rule = parse_rule(f"{text} {op} {bound} + m.x * 0")
    result = rule.evaluate({"m.x": Metric(x)})
    expected = eval(python.replace("--", "- -"), {"x": x})  # noqa: S307 - our own expression
    assert result.measured == pytest.approx(expected, abs=1e-9)
    assert result.status == ("passed" if COMPARISONS[op](result.measured, result.bound)
                             else "failed")
    assert COMPARISONS[op] is {"<=": operator.le, "<": operator.lt, ">=": operator.ge,
                               ">": operator.gt, "==": operator.eq, "!=": operator.ne}[op]


def test_every_rule_is_evaluated_even_after_an_error():
    rules = [parse_rule("no.such <= 1"), parse_rule("privacy.empirical_epsilon <= 1")]
    assert [r.status for r in evaluate_policy(rules, METRICS)] == ["errored", "passed"]


def test_assert_policy_for_pytest():
    from trustlab.audit.report import AuditResult, Report
    from trustlab.testing import assert_policy

    result = AuditResult("fairness")
    result.add_metric("sex.equalized_odds_difference", 0.08, (0.03, 0.13))
    report = Report(run_id="r", subject={}, results=[result])
    passed = assert_policy(report, ["fairness.sex.equalized_odds_difference <= 0.1",
                                    "fairness.sex.equalized_odds_difference <= baseline"])
    assert [r.status for r in passed] == ["passed", "skipped"]
    with pytest.raises(AssertionError, match=r"failed: upper\(fairness.sex.equalized_odds_diff"
                                             r"erence\) <= 0.1 \(measured 0.13, bound 0.1, CI "
                                             r"\[0.03, 0.13\]\)"):
        assert_policy(report, ["upper(fairness.sex.equalized_odds_difference) <= 0.1"])
    with pytest.raises(AssertionError, match="errored: fairness.sex.nope"):
        assert_policy(report.metrics(), ["fairness.sex.nope <= 1"])
