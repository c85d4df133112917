"""The explain auditor at smoke tier on the trained fixtures."""

from __future__ import annotations

import json

from trustlab.audit.runner import audit


def test_smoke_audit_of_digits_cnn(digits_cnn, tmp_path):
    report = audit(digits_cnn, auditors=["explain"], tier="smoke", show_progress=False)
    result = report.result("explain")
    assert result.status == "passed", result.error
    metrics = report.metrics()
    assert metrics["explain.completeness.worst_relative_gap"].value < 1e-2
    assert metrics["explain.Saliency.randomisation_spearman"].value < 0.5
    assert (metrics["explain.IntegratedGradients.deletion_auc"].value
            < metrics["explain.random.deletion_auc"].value)
    assert not any(name.endswith(".errored") for name in metrics)
    assert {a.name for a in result.artifacts} >= {"heatmaps.png", "deletion_insertion.json",
                                                   "randomisation_cascade.json"}


def test_smoke_audit_of_adult_mlp_folds_and_checks_fairness(adult_mlp):
    report = audit(adult_mlp, auditors=["explain"], tier="smoke", show_progress=False)
    result = report.result("explain")
    assert result.status == "passed", result.error
    metrics = report.metrics()
    assert 0 <= metrics["explain.fairness.sex.share"].value <= 1
    assert {"explain.fairness.sex.Female.share", "explain.fairness.sex.Male.share"} <= set(metrics)
    assert not any(name.endswith(".errored") for name in metrics)
    bars = next(a for a in result.artifacts if a.name == "importance_IntegratedGradients.json")
    assert bars.kind == "plot"


def test_bad_parameters_error_the_auditor(adult_mlp):
    report = audit(adult_mlp, auditors=["explain"], params={"explain": {"n_exampels": 3}},
                   show_progress=False)
    assert "unknown explain parameter(s) ['n_exampels']" in report.result("explain").error
    report = audit(adult_mlp, auditors=["explain"],
                   params={"explain": {"methods": ["LayerGradCam"]}}, show_progress=False)
    error = report.result("explain").error
    assert "do not apply to mlp" in error and "IntegratedGradients" in error
    json.dumps(report.to_dict())
