"""Disaggregated metrics: group rates from confusion counts, AUC and calibration via fairlearn's
``MetricFrame``.

``group_table`` gives one row per group: count, base rate, selection rate, accuracy, TPR, FPR,
FNR, precision (from the per-group confusion counts that the bootstrap also resamples, so
point estimates and intervals share one definition) and, from the positive-class scores, AUC and
expected calibration error (``MetricFrame``). The rates equal fairlearn's own functions; the
tests compare them with ``MetricFrame`` to 1e-12. Where a rate is undefined (no positives in a
group, no predicted positives) it is NaN, where sklearn/fairlearn would substitute 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import roc_auc_score

from trustlab.audit.fairness.bootstrap import confusion_counts, rates

RATE_METRICS = ("base_rate", "selection_rate", "accuracy", "true_positive_rate",
                "false_positive_rate", "false_negative_rate", "precision")


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present (undefined rather than an error)."""
    return float(roc_auc_score(y_true, y_score)) if len(np.unique(y_true)) == 2 else float("nan")


def reliability_curve(y_true: np.ndarray, y_score: np.ndarray,
                      n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of the positive-class score: count, mean score, observed positive rate."""
    bins = np.clip((np.asarray(y_score) * n_bins).astype(int), 0, n_bins - 1)
    frame = pd.DataFrame({"bin": bins, "score": y_score, "label": y_true})
    table = frame.groupby("bin").agg(count=("label", "size"), mean_score=("score", "mean"),
                                     positive_rate=("label", "mean"))
    return table.reset_index()


def expected_calibration_error(y_true: np.ndarray, y_score: np.ndarray,
                               n_bins: int = 10) -> float:
    """ECE: bin-size-weighted mean |observed positive rate - mean score| over equal-width bins."""
    if len(y_true) == 0:
        return float("nan")
    curve = reliability_curve(y_true, y_score, n_bins)
    gaps = (curve["positive_rate"] - curve["mean_score"]).abs()
    return float((curve["count"] * gaps).sum() / curve["count"].sum())


SCORE_METRICS = {"auc": auc, "ece": expected_calibration_error}


def group_table(y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None,
                codes: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """One row per group (index = ``labels``), one column per metric; rows with code -1 skipped."""
    counts = confusion_counts(y_true, y_pred, codes, len(labels))
    table = pd.DataFrame({"count": counts.sum(axis=1), **rates(counts)},
                         index=pd.Index(labels, name="group"))
    table = table[["count", *RATE_METRICS]]
    if y_score is None:
        return table
    valid = codes >= 0
    frame = MetricFrame(metrics=SCORE_METRICS, y_true=y_true[valid], y_pred=y_score[valid],
                        sensitive_features=pd.Series(codes[valid], name="group"))
    scores = frame.by_group.reindex(range(len(labels)))
    scores.index = table.index
    return pd.concat([table, scores], axis=1)
