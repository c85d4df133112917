"""The fairness auditor on the Adult MLP fixture: values against fairlearn, bad input, artifacts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import MetricFrame, equalized_odds_difference, selection_rate

from trustlab.audit.auditors.fairness import resolve_params
from trustlab.audit.runner import AuditConfig, get_auditor, run_auditor
from trustlab.errors import ConfigError
from trustlab.train.data import load_dataset
from trustlab.train.subject import Subject

FAST = {"mitigation": [], "slices": False, "n_resamples": 50}


def _run(subject: Subject, tmp_path, **params):
    config = AuditConfig(params=params, tier="smoke", run_dir=tmp_path, auditor="fairness")
    return run_auditor(get_auditor("fairness"), subject, config)


def _with_test_sensitive(subject: Subject, sensitive: pd.DataFrame) -> Subject:
    test = dataclasses.replace(subject.split("test"), sensitive=sensitive)
    data = dataclasses.replace(subject.data, splits={**subject.data.splits, "test": test})
    return Subject(subject.name, subject.model, data, subject.meta)


@pytest.fixture(scope="module")
def adult_result(adult_mlp: Subject, tmp_path_factory: pytest.TempPathFactory):
    return _run(adult_mlp, tmp_path_factory.mktemp("fair"))


def test_reported_group_metrics_equal_fairlearn(adult_mlp: Subject, adult_result) -> None:
    assert adult_result.status in ("passed", "failed"), adult_result.error
    test = adult_mlp.split("test")
    pred = adult_mlp.predict_proba(test.X).argmax(axis=1)
    sens = test.sensitive
    for name, groups in (("sex", sens["sex"]), ("race", sens["race"]),
                         ("sex_x_race", sens["sex"] + "_x_" + sens["race"])):
        frame = MetricFrame(metrics={"selection_rate": selection_rate}, y_true=test.y,
                            y_pred=pred, sensitive_features=groups.to_numpy())
        for group, value in frame.by_group["selection_rate"].items():
            label = str(group).replace(" ", "_")
            reported = adult_result.metrics[f"fairness.{name}.by_group.{label}.selection_rate"]
            assert abs(reported.value - value) < 1e-12
            assert reported.ci_low <= reported.value <= reported.ci_high
    eo = adult_result.metrics["fairness.sex.equalized_odds_difference"]
    reference = equalized_odds_difference(test.y, pred, sensitive_features=sens["sex"])
    assert abs(eo.value - reference) < 1e-12
    assert eo.ci_low is not None and eo.ci_low <= eo.ci_high


def test_threshold_optimizer_and_artifacts(adult_result) -> None:
    metrics = adult_result.metrics
    before = metrics["fairness.sex.equalized_odds_difference"].value
    after = metrics["fairness.sex.threshold_optimizer.equalized_odds_difference"].value
    assert after < before
    assert "fairness.race.by_group.White.train_share" in metrics
    assert any(f.message.startswith("weak slice #1") for f in adult_result.findings)
    names = {a.name for a in adult_result.artifacts}
    assert {"sex_by_group.json", "sex_calibration.json", "sex_tradeoff.json",
            "sex_x_race_by_group.json", "weak_slices.json"} <= names


def test_plot_artifacts_are_plotly_json(adult_result, tmp_path_factory) -> None:
    run_dir = next(tmp_path_factory.getbasetemp().glob("fair*"))
    figure = json.loads((run_dir / "fairness" / "sex_by_group.json").read_text())
    assert figure["data"][0]["type"] == "bar" and "error_y" in figure["data"][0]


def test_missing_feature_and_nan_are_findings(adult_mlp: Subject, tmp_path) -> None:
    sensitive = adult_mlp.split("test").sensitive.copy()
    sensitive.loc[:9, "sex"] = np.nan
    subject = _with_test_sensitive(adult_mlp, sensitive)
    result = _run(subject, tmp_path, sensitive_features=["sex", "religion"], **FAST)
    assert result.status != "errored", result.error
    messages = " ".join(f.message for f in result.findings)
    assert "'religion' is not in the data" in messages
    assert "missing (NaN/empty) in 10 of" in messages
    assert "fairness.sex.demographic_parity_difference" in result.metrics


def test_single_member_group_is_flagged_not_dropped(adult_mlp: Subject, tmp_path) -> None:
    sensitive = adult_mlp.split("test").sensitive.copy()
    sensitive.loc[0, "race"] = "Martian"
    result = _run(_with_test_sensitive(adult_mlp, sensitive), tmp_path, **FAST)
    assert "fairness.race.by_group.Martian.count" in result.metrics
    assert any("Martian (n=1)" in f.message for f in result.findings)
    assert np.isfinite(result.metrics["fairness.race.equalized_odds_difference"].value)


class _Constant(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([2.0, -2.0]).expand(len(x), 2)


def test_constant_predictions_do_not_crash(adult_mlp: Subject, tmp_path) -> None:
    subject = Subject("constant", _Constant(), adult_mlp.data, adult_mlp.meta)
    result = _run(subject, tmp_path, mitigation=["threshold_optimizer"], slices=True,
                  n_resamples=50)
    assert result.status == "failed", result.error
    assert any("predicts class 0 for every row" in f.message for f in result.findings)
    assert result.metrics["fairness.sex.demographic_parity_difference"].value == 0


def test_no_usable_feature_is_a_clear_error(adult_mlp: Subject, tmp_path) -> None:
    result = _run(adult_mlp, tmp_path, sensitive_features=["religion"], **FAST)
    assert result.status == "errored" and "no usable sensitive feature" in result.error


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown fairness parameter"):
        resolve_params({"bootstraps": 5}, "smoke")
    with pytest.raises(ConfigError, match="unknown mitigation"):
        resolve_params({"mitigation": ["magic"]}, "full")


def test_applies_only_to_tabular_classifiers(adult_mlp: Subject) -> None:
    auditor = get_auditor("fairness")
    digits = Subject("digits", adult_mlp.model, load_dataset("digits"), {"arch": "cnn"})
    autoencoder = Subject("ae", adult_mlp.model, adult_mlp.data,
                          {"arch": "autoencoder", "task": "reconstruction"})
    assert auditor.applies_to(adult_mlp)
    assert not auditor.applies_to(digits) and not auditor.applies_to(autoencoder)


def test_expected_outcome_of_randomised_thresholds_matches_fairlearn_pmf() -> None:
    """P(ŷ = 1) averaged over seeded draws ≈ fairlearn's own probabilities of its randomised
    thresholds; counts of P(ŷ = 1) are the expected counts, of hard predictions the plain ones."""
    from fairlearn.postprocessing import ThresholdOptimizer

    from trustlab.audit.fairness.bootstrap import confusion_counts
    from trustlab.audit.fairness.mitigation import ScoreClassifier, threshold_optimizer

    rng = np.random.default_rng(0)
    groups = rng.choice(["a", "b", "c"], 3000, p=[0.6, 0.3, 0.1])
    y = (rng.random(3000) < np.where(groups == "a", 0.4, 0.2)).astype(np.int64)
    scores = np.clip(0.3 * y + rng.normal(0.35, 0.2, 3000) + 0.1 * (groups == "a"), 0, 1)
    got = threshold_optimizer(scores[:2000], y[:2000], groups[:2000], scores[2000:],
                              groups[2000:], seed=1)
    reference = ThresholdOptimizer(estimator=ScoreClassifier().fit(None), prefit=True,
                                   constraints="equalized_odds", predict_method="predict_proba")
    reference.fit(scores[:2000, None], y[:2000], sensitive_features=groups[:2000])
    pmf = reference._pmf_predict(scores[2000:, None], sensitive_features=groups[2000:])[:, 1]
    assert np.abs(got - pmf).max() < 0.2 and abs(got.mean() - pmf.mean()) < 0.01
    codes = np.searchsorted(["a", "b", "c"], groups)
    hard = (scores >= 0.5).astype(np.int64)
    naive_hard = np.zeros((3, 4), np.int64)
    naive_soft = np.zeros((3, 4))
    for i in range(3000):
        naive_hard[codes[i], 2 * y[i] + hard[i]] += 1
        if i >= 2000:
            naive_soft[codes[i], 2 * y[i] + 1] += got[i - 2000]
            naive_soft[codes[i], 2 * y[i]] += 1 - got[i - 2000]
    assert np.array_equal(confusion_counts(y, hard, codes, 3), naive_hard)
    np.testing.assert_allclose(confusion_counts(y[2000:], got, codes[2000:], 3), naive_soft,
                               rtol=1e-12)


def test_mitigation_split_must_not_be_the_audited_split(adult_mlp: Subject, tmp_path) -> None:
    result = _run(adult_mlp, tmp_path, mitigation=["threshold_optimizer"], slices=False,
                  n_resamples=20, mitigation_split=["test"], sensitive_features=["sex"])
    assert result.status == "errored" and "mitigation_split" in result.error


def test_fair_finetune_narrows_the_equalized_odds_gap(adult_mlp: Subject, tmp_path) -> None:
    result = _run(adult_mlp, tmp_path, mitigation=["fair_finetune"], finetune_weights=[0.0, 10.0],
                  slices=False, n_resamples=20, sensitive_features=["sex"], intersections=False)
    metrics = {k: v.value for k, v in result.metrics.items()}
    plain = metrics["fairness.sex.fair_finetune.weight_0.equalized_odds_difference"]
    penalised = metrics["fairness.sex.fair_finetune.weight_10.equalized_odds_difference"]
    assert penalised < 0.8 * plain, (plain, penalised)
    assert metrics["fairness.sex.fair_finetune.weight_10.accuracy"] > 0.75
