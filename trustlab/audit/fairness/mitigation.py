"""Bias mitigation, compared before/after on the same evaluation rows.

* post-processing for any model from its scores: fairlearn's ``ThresholdOptimizer``;
* reductions where a scikit-learn learner fits: fairlearn's ``ExponentiatedGradient`` around a
  logistic regression on the same encoded features (a reference learner, not the audited model);
* in-processing for our torch zoo: fine-tuning the audited model with a fairness-penalised
  loss, cross-entropy + ``weight`` x (spread of the mean positive score across groups, within
  each true label) -- a smooth surrogate of the equalized-odds gap.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from fairlearn.postprocessing import ThresholdOptimizer
from fairlearn.reductions import DemographicParity, EqualizedOdds, ExponentiatedGradient
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from torch import nn

from trustlab.audit.fairness.bootstrap import confusion_counts, disparities
from trustlab.errors import ConfigError
from trustlab.train.trainer import seed_everything

CONSTRAINTS = {"equalized_odds": EqualizedOdds, "demographic_parity": DemographicParity}


@dataclass
class Outcome:
    """Accuracy and disparities of one (mitigated or original) predictor on the eval rows."""

    method: str
    setting: str
    accuracy: float
    equalized_odds_difference: float
    demographic_parity_difference: float


def outcome(method: str, setting: str, y_true: np.ndarray, y_pred: np.ndarray,
            codes: np.ndarray, n_groups: int, keep_groups: np.ndarray) -> Outcome:
    """Score predictions with the same disparity definitions as the audit. ``y_pred`` may be
    P(ŷ = 1) of a randomised predictor: its expected accuracy and disparities are scored."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred, dtype=float)
    gaps = disparities(confusion_counts(y_true, y_pred, codes, n_groups)[keep_groups])
    accuracy = np.mean(np.where(y_true == 1, y_pred, 1 - y_pred))  # every row, grouped or not
    return Outcome(method, setting, float(accuracy), float(gaps["equalized_odds_difference"]),
                   float(gaps["demographic_parity_difference"]))


def expected_predictions(predict, *, draws: int = 100, seed: int = 0) -> np.ndarray:
    """P(ŷ = 1) per row of a randomised fairlearn predictor, ``predict(random_state=...)``,
    averaged over ``draws`` seeded draws (one draw's disparities are noisy on small groups)."""
    return np.mean([np.asarray(predict(random_state=seed + i)) for i in range(draws)], axis=0)


class ScoreClassifier(ClassifierMixin, BaseEstimator):
    """A fitted passthrough classifier: column 0 of ``X`` is already P(y = 1).

    Lets fairlearn's post-processing run on any model's scores without refitting it.
    """

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> "ScoreClassifier":
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        scores = np.asarray(X, dtype=float)[:, 0]
        return np.column_stack([1 - scores, scores])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=float)[:, 0] >= 0.5).astype(np.int64)


def threshold_optimizer(fit_scores: np.ndarray, fit_y: np.ndarray, fit_groups: np.ndarray,
                        eval_scores: np.ndarray, eval_groups: np.ndarray, *,
                        constraints: str = "equalized_odds", seed: int = 0) -> np.ndarray:
    """Fit group-specific randomised thresholds on some rows; P(ŷ = 1) on the eval rows."""
    optimizer = ThresholdOptimizer(estimator=ScoreClassifier().fit(None), constraints=constraints,
                                   objective="accuracy_score", prefit=True,
                                   predict_method="predict_proba")
    optimizer.fit(fit_scores[:, None], fit_y, sensitive_features=fit_groups)
    return expected_predictions(partial(optimizer.predict, eval_scores[:, None],
                                        sensitive_features=eval_groups), seed=seed)


def exponentiated_gradient(X_fit: np.ndarray, y_fit: np.ndarray, groups_fit: np.ndarray,
                           X_eval: np.ndarray, *, constraint: str = "equalized_odds",
                           difference_bound: float | None = 0.02, seed: int = 0) -> np.ndarray:
    """Logistic regression under a fairness constraint (``None`` bound: unconstrained); P(ŷ = 1)
    of the randomised reduction on ``X_eval``."""
    learner = LogisticRegression(max_iter=500)
    if difference_bound is None:
        return learner.fit(X_fit, y_fit).predict(X_eval).astype(np.int64)
    if constraint not in CONSTRAINTS:
        raise ConfigError(f"constraint must be one of {sorted(CONSTRAINTS)}, got {constraint!r}")
    reduction = ExponentiatedGradient(learner, CONSTRAINTS[constraint](
        difference_bound=difference_bound), max_iter=15)
    reduction.fit(X_fit, y_fit, sensitive_features=groups_fit)
    return expected_predictions(partial(reduction.predict, X_eval), seed=seed)


def equalized_odds_penalty(scores: torch.Tensor, y: torch.Tensor,
                           groups: torch.Tensor) -> torch.Tensor:
    """Mean squared gap between each group's mean score and the label's mean, per true label."""
    onehot = nn.functional.one_hot(groups, int(groups.max()) + 1).float()
    total = scores.new_zeros(())
    for label in (0, 1):
        mask = y == label
        if mask.sum() == 0:
            continue
        members = onehot[mask]
        sizes = members.sum(dim=0)
        present = sizes > 0
        means = (members.T @ scores[mask])[present] / sizes[present]
        total = total + ((means - scores[mask].mean()) ** 2).mean()
    return total


def fair_finetune(model: nn.Module, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                  weight: float, epochs: int = 2, lr: float = 2e-4, batch_size: int = 512,
                  seed: int = 0) -> nn.Module:
    """A copy of ``model`` fine-tuned with cross-entropy + ``weight`` x the EO penalty.

    ``groups`` are non-negative group codes per row (rows with missing groups excluded by the
    caller). Larger batches keep every group's per-batch mean estimable.
    """
    seed_everything(seed)
    tuned = copy.deepcopy(model).cpu().train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr)
    X_t, y_t, g_t = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(groups)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y_t), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            logits = tuned(X_t[batch])
            loss = nn.functional.cross_entropy(logits, y_t[batch])
            if weight > 0:
                scores = logits.softmax(dim=1)[:, 1]
                loss = loss + weight * equalized_odds_penalty(scores, y_t[batch], g_t[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return tuned.eval()
