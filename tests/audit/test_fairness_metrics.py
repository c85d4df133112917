"""Fairness metrics against fairlearn, bootstrap coverage, bad-input handling (no models here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (MetricFrame, count, demographic_parity_difference,
                               demographic_parity_ratio, equal_opportunity_difference,
                               equalized_odds_difference, false_negative_rate,
                               false_positive_rate, selection_rate, true_positive_rate)
from sklearn.metrics import accuracy_score, precision_score, roc_auc_score

from trustlab.audit.fairness.bootstrap import (confusion_counts, disparities,
                                               disparity_estimates)
from trustlab.audit.fairness.groups import build_groupings, safe_label
from trustlab.audit.fairness.metrics import expected_calibration_error, group_table
from trustlab.audit.fairness.slices import find_weak_slices
from trustlab.stats import bootstrap_ci, bootstrap_counts
from trustlab.train.data import Split

FAIRLEARN = {"count": count, "selection_rate": selection_rate, "accuracy": accuracy_score,
             "true_positive_rate": true_positive_rate, "false_positive_rate": false_positive_rate,
             "false_negative_rate": false_negative_rate,
             "precision": lambda t, p: precision_score(t, p, zero_division=np.nan),
             "base_rate": lambda t, p: float(np.mean(t))}


def _population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = rng.choice(np.array(["a", "b", "c"]), size=n, p=[0.6, 0.3, 0.1])
    y = (rng.random(n) < np.where(groups == "a", 0.4, 0.25)).astype(np.int64)
    score = np.clip(0.35 * y + rng.random(n) * 0.65 + np.where(groups == "c", 0.1, 0.0), 0, 1)
    return groups, y, (score >= 0.5).astype(np.int64), score


def test_group_table_equals_fairlearn_metricframe() -> None:
    groups, y, pred, score = _population(3000, 1)
    codes = np.searchsorted(["a", "b", "c"], groups)
    table = group_table(y, pred, score, codes, ["a", "b", "c"])
    frame = MetricFrame(metrics={**FAIRLEARN, "auc": roc_auc_score}, y_true=y,
                        y_pred=pred, sensitive_features=groups)
    reference = frame.by_group
    reference["auc"] = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=score,
                                   sensitive_features=groups).by_group
    for metric in [*FAIRLEARN, "auc"]:
        np.testing.assert_allclose(table[metric].to_numpy(float),
                                   reference[metric].to_numpy(float), rtol=0, atol=1e-12,
                                   err_msg=metric)


def test_disparities_equal_fairlearn() -> None:
    groups, y, pred, _ = _population(3000, 2)
    codes = np.searchsorted(["a", "b", "c"], groups)
    ours = disparities(confusion_counts(y, pred, codes, 3))
    kw = {"y_true": y, "y_pred": pred, "sensitive_features": groups}
    expected = {"demographic_parity_difference": demographic_parity_difference(**kw),
                "demographic_parity_ratio": demographic_parity_ratio(**kw),
                "equalized_odds_difference": equalized_odds_difference(**kw),
                "equal_opportunity_difference": equal_opportunity_difference(**kw)}
    frame = MetricFrame(metrics={"accuracy": accuracy_score,
                                 "precision": FAIRLEARN["precision"]}, **kw)
    expected["accuracy_difference"] = frame.difference()["accuracy"]
    expected["predictive_parity_difference"] = frame.difference()["precision"]
    expected["worst_group_accuracy"] = frame.group_min()["accuracy"]
    for name, value in expected.items():
        assert abs(float(ours[name]) - value) < 1e-12, name


def test_ece_matches_naive_loop() -> None:
    _, y, _, score = _population(500, 3)
    naive = 0.0
    for b in range(10):
        members = np.clip((score * 10).astype(int), 0, 9) == b
        if members.any():
            naive += members.sum() * abs(y[members].mean() - score[members].mean())
    assert expected_calibration_error(y, score) == pytest.approx(naive / len(y), abs=1e-12)


def test_count_bootstrap_matches_row_bootstrap() -> None:
    """The multinomial count resampling has the distribution of resampling rows by group."""
    groups, y, pred, _ = _population(2000, 4)
    codes = np.searchsorted(["a", "b", "c"], groups)
    counts = confusion_counts(y, pred, codes, 3)
    ours = disparities(bootstrap_counts(counts, n_resamples=4000, seed=0))
    rows = 2 * y + pred

    def statistic(indices: np.ndarray) -> np.ndarray:
        flat = codes[indices] * 4 + rows[indices]
        per = np.stack([np.bincount(r, minlength=12) for r in flat]).reshape(-1, 3, 4)
        return disparities(per)["equalized_odds_difference"]

    row_ci = bootstrap_ci(statistic, len(y), n_resamples=4000, seed=1, strata=codes)
    count_ci = np.quantile(ours["equalized_odds_difference"], [0.025, 0.975])
    np.testing.assert_allclose(count_ci, row_ci, atol=0.01)


@pytest.mark.parametrize("metric", ["demographic_parity_difference", "equalized_odds_difference"])
def test_bootstrap_ci_covers_true_disparity(metric: str) -> None:
    """Repeated samples from a population with a known disparity: >= 90% coverage."""
    # population: group a selects 0.5/0.3 (y=1/y=0), group b 0.3/0.2; P(y=1) = 0.5 in both
    tpr, fpr, base = np.array([0.5, 0.3]), np.array([0.3, 0.2]), 0.5
    truth = {"demographic_parity_difference": base * 0.2 + (1 - base) * 0.1,
             "equalized_odds_difference": 0.2}[metric]
    cells = np.stack([(1 - base) * (1 - fpr), (1 - base) * fpr, base * (1 - tpr), base * tpr], 1)
    rng = np.random.default_rng(0)
    covered, draws = 0, 300
    for i in range(draws):
        counts = np.stack([rng.multinomial(n, p) for n, p in zip((1200, 400), cells)])
        ci = disparity_estimates(counts, n_resamples=500, seed=i)[metric].ci
        covered += ci[0] <= truth <= ci[1]
    assert covered / draws >= 0.90


def _split(sensitive: pd.DataFrame) -> Split:
    n = len(sensitive)
    return Split(X=np.zeros((n, 1), np.float32), y=np.zeros(n, np.int64), sensitive=sensitive,
                 rows=np.arange(n), frame=pd.DataFrame({"age": np.arange(n)}))


def test_groupings_report_bad_input_without_raising() -> None:
    sensitive = pd.DataFrame({"sex": ["F", "M", "M", "F", "nan", None, "M", "F"],
                              "race": ["x", "y", "y", "x", "y", "x", "y", "z"]})
    groupings, problems = build_groupings(_split(sensitive), ["sex", "race", "religion"],
                                          min_group_size=2)
    text = " ".join(problems)
    assert "'religion' is not in the data" in text and "available columns" in text
    assert "'sex' is missing (NaN/empty) in 2 of 8 rows" in text
    assert "z (n=1)" in text
    assert [g.name for g in groupings] == ["sex", "race", "sex_x_race"]
    sex = groupings[0]
    assert (sex.codes[[4, 5]] == -1).all() and sex.sizes.tolist() == [3, 3]
    assert groupings[2].labels[0] == "F_x_x"


def test_safe_label_keeps_metric_name_characters() -> None:
    assert safe_label(">=25") == ">=25"
    assert safe_label("Asian Pac/Islander") == "Asian_Pac_Islander"


def test_weak_slices_find_planted_slice() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"colour": rng.choice(["red", "blue", "green"], 3000),
                          "size": rng.normal(size=3000)})
    correct = rng.random(3000) < 0.9
    planted = (frame["colour"] == "green") & (frame["size"] > frame["size"].quantile(0.75))
    correct[planted.to_numpy()] = rng.random(planted.sum()) < 0.5
    found = find_weak_slices(frame, correct, min_size=30)
    assert found and "colour = green" in found[0].description and "size" in found[0].description
    assert found[0].ci[1] < correct.mean()
