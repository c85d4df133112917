"""MIA metrics against scikit-learn and naive references; the one-run ε bound on randomised
response, where the true ε is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from trustlab.errors import DataError
from trustlab.privacy.audit import (dp_audit_p_value, epsilon_from_guesses, epsilon_lower_bound,
                                    group_tpr_at_fpr, mia_metrics, one_run_audit, tpr_at_fpr)


def _scores(n: int = 4000, shift: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    is_member = rng.random(n) < 0.5
    return rng.normal(shift * is_member, 1.0), is_member


def test_tpr_at_fpr_matches_roc_curve() -> None:
    scores, is_member = _scores()
    fpr_curve, tpr_curve, _ = roc_curve(is_member, scores)
    for fpr in (0.001, 0.01, 0.1):
        expected = tpr_curve[fpr_curve <= fpr].max()
        assert tpr_at_fpr(scores, is_member, fpr).tpr == pytest.approx(expected)


def test_mia_metrics_match_sklearn_and_ci_covers() -> None:
    scores, is_member = _scores()
    metrics = mia_metrics(scores, is_member, fprs=(0.01,))
    assert metrics.auc == pytest.approx(roc_auc_score(is_member, scores))
    assert metrics.auc_ci[0] < metrics.auc < metrics.auc_ci[1]
    fpr_curve, tpr_curve, _ = roc_curve(is_member, scores)
    assert metrics.advantage == pytest.approx(np.max(tpr_curve - fpr_curve))
    rate = metrics.at_fpr[0.01]
    assert rate.ci[0] <= rate.tpr <= rate.ci[1]


def test_too_few_nonmembers_for_fpr_is_a_clear_error() -> None:
    scores, is_member = _scores(n=600)
    with pytest.raises(DataError, match="needs at least 1000 non-members"):
        tpr_at_fpr(scores, is_member, 0.001)


def test_one_class_labels_rejected() -> None:
    with pytest.raises(DataError, match="both members and non-members"):
        mia_metrics(np.zeros(10), np.ones(10))


def test_group_tpr_uses_global_threshold() -> None:
    scores, is_member = _scores(n=4000)
    groups = np.where(np.arange(4000) % 2 == 0, "a", "b")
    scores = scores + (groups == "a") * is_member * 2.0  # group a leaks more
    out = group_tpr_at_fpr(scores, is_member, groups, 0.01)
    assert out["a"]["tpr"] > out["b"]["tpr"]
    assert sum(v["members"] for v in out.values()) == is_member.sum()


def test_p_value_without_delta_is_the_binomial_tail() -> None:
    eps, r, v = 1.0, 100, 70
    q = math.exp(eps) / (1 + math.exp(eps))
    assert dp_audit_p_value(200, r, v, eps, 0.0) == pytest.approx(stats.binom.sf(v - 1, r, q))
    assert dp_audit_p_value(200, r, v, eps, 1e-5) >= dp_audit_p_value(200, r, v, eps, 0.0)


def test_epsilon_from_guesses_is_monotone_in_correct_guesses() -> None:
    bounds = [epsilon_from_guesses(1000, 200, v, 1e-5) for v in (100, 130, 160, 190)]
    assert bounds[0] == 0.0 and all(a < b for a, b in zip(bounds, bounds[1:]))


def _randomised_response(epsilon: float):
    """ε-DP randomised response on each canary's inclusion bit: a mechanism of known ε."""
    keep = math.exp(epsilon) / (1 + math.exp(epsilon))

    def train_and_score(included: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(int(included.sum()))
        truthful = rng.random(len(included)) < keep
        answer = np.where(truthful, included, ~included)
        return answer + 1e-3 * rng.random(len(included))  # tie-break independently of the bits

    return train_and_score


def test_one_run_bound_exceeds_true_epsilon_at_most_at_its_error_rate() -> None:
    """A 95% bound may exceed ε in ≤ 5% of runs (it did once in these 60); at 99.9% never."""
    trials = [(eps, seed) for eps in (0.5, 1.0, 2.0, 4.0) for seed in range(15)]
    at_95 = [one_run_audit(_randomised_response(e), 2000, seed=s).epsilon > e for e, s in trials]
    assert sum(at_95) <= 0.05 * len(trials)
    for epsilon, seed in trials:
        audit = one_run_audit(_randomised_response(epsilon), 2000, confidence=0.999, seed=seed)
        assert audit.epsilon <= epsilon


def test_one_run_bound_reaches_half_of_true_epsilon_with_many_canaries() -> None:
    for epsilon in (1.0, 2.0, 4.0):
        audit = one_run_audit(_randomised_response(epsilon), 20_000, delta=1e-5, seed=1)
        assert 0.5 * epsilon <= audit.epsilon <= epsilon


def test_no_signal_gives_zero_epsilon() -> None:
    rng = np.random.default_rng(3)
    included = rng.random(1000) < 0.5
    assert epsilon_lower_bound(rng.random(1000), included).epsilon < 0.3
