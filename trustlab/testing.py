"""pytest integration: gate a model's audit inside a test suite.

```python
from trustlab.testing import assert_policy

def test_model_meets_policy(tmp_path):
    assert_policy("audit.yaml", store=tmp_path)          # run the spec, gate on its policy
    assert_policy(report, ["upper(fairness.sex.equalized_odds_difference) <= 0.10"])
```
"""

from __future__ import annotations

from pathlib import Path

from trustlab.audit.policy import RuleResult, evaluate_policy, parse_rule
from trustlab.audit.report import Metric, Report

Source = Report | dict | str | Path


def assert_policy(source: Source, rules: list[str] | None = None, *,
                  baseline: Report | dict[str, Metric] | None = None,
                  store: str | Path | None = None, tier: str | None = None) -> list[RuleResult]:
    """Assert that every rule passes; returns the rule results.

    ``source`` is a Report, a GateResult, a ``{name: Metric}`` map, or the path of an audit
    spec (run into ``store``, whose own policy is checked along with ``rules``). A failed or
    unevaluable rule raises AssertionError listing each with measured value, bound and CI;
    rules comparing with a baseline are skipped when none is given.
    """
    results: list[RuleResult] = []
    if isinstance(source, (str, Path)):
        source = _run_spec(Path(source), store, tier)
    if hasattr(source, "rules") and hasattr(source, "report"):  # a GateResult
        results += source.rules
        source = source.report
    metrics = source.metrics() if isinstance(source, Report) else source
    old = baseline.metrics() if isinstance(baseline, Report) else baseline
    results += evaluate_policy([parse_rule(r) for r in rules or []], metrics, old)
    bad = [r for r in results if r.status in ("failed", "errored")]
    if bad:
        lines = [f"{r.status}: {r.rule} (measured {r.measured}, bound {r.bound}"
                 f"{f', CI {list(r.ci)}' if r.ci else ''}) — {r.message}" for r in bad]
        raise AssertionError(f"{len(bad)} of {len(results)} policy rules not met:\n  "
                             + "\n  ".join(lines))
    return results


def _run_spec(path: Path, store: str | Path | None, tier: str | None):  # noqa: ANN202
    from trustlab.audit.pipeline import run_spec
    from trustlab.audit.spec import load_spec
    from trustlab.audit.store import ReportStore

    if store is None:
        raise ValueError("assert_policy(spec_path) needs store= (e.g. pytest's tmp_path)")
    return run_spec(load_spec(path), ReportStore(store), tier=tier, show_progress=False)
