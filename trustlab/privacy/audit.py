"""Privacy audit statistics: how well membership scores separate members, and what ε that proves.

``mia_metrics`` turns attack scores (higher = "member") into ROC AUC, balanced accuracy,
membership advantage and TPR at fixed low FPRs with Clopper–Pearson intervals, plus the ROC curve
for log–log plots. ``epsilon_lower_bound`` is the one-run audit of Steinke, Nasr & Jagielski
(2023): from the guesses about canaries that were each included with probability ½ it gives an
ε that the training run provably exceeds with 95% confidence; ``one_run_audit`` runs the whole
protocol around a training function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from trustlab.errors import DataError
from trustlab.stats import bootstrap_ci, clopper_pearson

DEFAULT_FPRS = (0.001, 0.01)


@dataclass
class RateAtFPR:
    """TPR at (at most) a target FPR, with the counts behind it and a Clopper–Pearson CI."""

    fpr: float
    tpr: float
    ci: tuple[float, float]
    true_positives: int
    members: int
    threshold: float


@dataclass
class MIAMetrics:
    """Every metric of one membership-inference attack on one member/non-member set."""

    auc: float
    auc_ci: tuple[float, float]
    balanced_accuracy: float
    advantage: float
    at_fpr: dict[float, RateAtFPR]
    roc_fpr: np.ndarray = field(repr=False)
    roc_tpr: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        """Flat metric names as the privacy auditor records them."""
        out = {"auc": self.auc, "balanced_accuracy": self.balanced_accuracy,
               "advantage": self.advantage}
        out.update({f"tpr_at_{fpr:g}_fpr": r.tpr for fpr, r in self.at_fpr.items()})
        return out


def check_membership_labels(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Validate and return ``(scores, is_member)`` as float and bool arrays."""
    scores = np.asarray(scores, dtype=float).ravel()
    is_member = np.asarray(is_member).astype(bool).ravel()
    if scores.shape != is_member.shape:
        raise DataError(f"scores ({scores.shape}) and is_member ({is_member.shape}) differ in "
                        "length: give one score per example")
    if is_member.all() or not is_member.any():
        raise DataError("membership labels need both members and non-members; got "
                        f"{int(is_member.sum())} members of {len(is_member)} examples")
    if not np.isfinite(scores).all():
        raise DataError(f"{int((~np.isfinite(scores)).sum())} attack scores are NaN or infinite")
    return scores, is_member


def min_nonmembers(fpr: float) -> int:
    """Non-members needed to measure TPR at ``fpr`` at all (one false positive allowed)."""
    return math.ceil(1 / fpr - 1e-9)


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float,
               confidence: float = 0.95) -> RateAtFPR:
    """TPR of the threshold that lets at most ``⌊fpr·n_non-members⌋`` non-members through.

    Raises :class:`DataError` when there are fewer than ``1/fpr`` non-members: the rate would be
    an extrapolation."""
    scores, is_member = check_membership_labels(scores, is_member)
    negatives = np.sort(scores[~is_member])[::-1]
    if len(negatives) < min_nonmembers(fpr):
        raise DataError(f"TPR at {fpr:g} FPR needs at least {min_nonmembers(fpr)} non-members, "
                        f"got {len(negatives)}: use more non-members or a larger FPR")
    allowed = int(math.floor(fpr * len(negatives) + 1e-9))
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    positives = scores[is_member]
    hits = int((positives > threshold).sum())
    return RateAtFPR(fpr=fpr, tpr=hits / len(positives),
                     ci=clopper_pearson(hits, len(positives), confidence),
                     true_positives=hits, members=len(positives), threshold=float(threshold))


def _rank_auc(scores: np.ndarray, is_member: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """AUC of each bootstrap resample (rows of ``indices``) by the rank-sum formula."""
    s, m = scores[indices], is_member[indices]
    ranks = stats.rankdata(s, axis=1)
    pos = m.sum(axis=1)
    neg = m.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * m).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)


def mia_metrics(scores: np.ndarray, is_member: np.ndarray, *, fprs: tuple[float, ...] =
                DEFAULT_FPRS, n_resamples: int = 200, seed: int = 0) -> MIAMetrics:
    """ROC AUC (stratified bootstrap CI), balanced accuracy and advantage of the best
    threshold, and TPR at each of ``fprs`` (Clopper–Pearson CI)."""
    scores, is_member = check_membership_labels(scores, is_member)
    fpr_curve, tpr_curve, _ = roc_curve(is_member, scores)
    advantage = float(np.max(tpr_curve - fpr_curve))
    auc_ci = bootstrap_ci(lambda idx: _rank_auc(scores, is_member, idx), len(scores),
                          n_resamples=n_resamples, seed=seed, strata=is_member)
    return MIAMetrics(auc=float(roc_auc_score(is_member, scores)), auc_ci=auc_ci,
                      balanced_accuracy=(1 + advantage) / 2, advantage=advantage,
                      at_fpr={f: tpr_at_fpr(scores, is_member, f) for f in fprs},
                      roc_fpr=fpr_curve, roc_tpr=tpr_curve)


def group_tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, groups: np.ndarray,
                     fpr: float = 0.01) -> dict[str, dict]:
    """TPR per group at the *global* threshold for ``fpr``: whose membership leaks most.

    Returns ``{group: {"tpr", "ci", "members", "fpr"}}`` (the group's own FPR at that threshold).
    """
    overall = tpr_at_fpr(scores, is_member, fpr)
    scores, is_member = check_membership_labels(scores, is_member)
    groups = np.asarray(groups).astype(str)
    out = {}
    for group in np.unique(groups):
        in_group = groups == group
        members = is_member & in_group
        hits = int((scores[members] > overall.threshold).sum())
        nonmembers = ~is_member & in_group
        false = int((scores[nonmembers] > overall.threshold).sum())
        out[str(group)] = {"tpr": hits / max(int(members.sum()), 1),
                           "ci": clopper_pearson(hits, int(members.sum())),
                           "members": int(members.sum()),
                           "fpr": false / max(int(nonmembers.sum()), 1)}
    return out


# --- one-run ε auditing (Steinke, Nasr & Jagielski 2023) --------------------------------------


def dp_audit_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ``v`` correct out of ``r`` guesses on ``m`` canaries under (ε, δ)-DP.

    The paper's Theorem 3.1 bound: ``P[Binomial(r, e^ε/(1+e^ε)) ≥ v] + 2mδ·α`` with
    ``α = max_i P[v > Binomial(r, q) ≥ v - i] / i``."""
    if not 0 <= v <= r <= m:
        raise DataError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    q = 1 / (1 + math.exp(-epsilon))
    beta = stats.binom.sf(v - 1, r, q)
    if v == 0 or delta == 0:
        return float(min(beta, 1.0))
    cumulative = np.cumsum(stats.binom.pmf(v - np.arange(1, v + 1), r, q))
    alpha = float(np.max(cumulative / np.arange(1, v + 1)))
    return float(min(beta + alpha * delta * 2 * m, 1.0))


def epsilon_from_guesses(m: int, r: int, v: int, delta: float = 0.0,
                         confidence: float = 0.95) -> float:
    """Largest ε that ``v``/``r`` correct guesses reject at ``confidence`` (0 if none)."""
    p = 1 - confidence
    if r == 0 or dp_audit_p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0
    while dp_audit_p_value(m, r, v, high, delta) < p:
        high *= 2
        if high > 1e3:
            return math.inf
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if dp_audit_p_value(m, r, v, mid, delta) < p else (low, mid)
    return low


@dataclass
class EpsilonAudit:
    """The one-run audit's verdict: ε̂ (a lower bound at ``confidence``) and how it was reached."""

    epsilon: float
    canaries: int
    guesses: int
    correct: int
    confidence: float
    delta: float


def epsilon_lower_bound(scores: np.ndarray, included: np.ndarray, *, delta: float = 0.0,
                        confidence: float = 0.95,
                        guess_fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                                                              1.0)) -> EpsilonAudit:
    """ε lower bound from canary scores (higher = "included") and the true inclusion bits.

    For each fraction ``f`` the attacker guesses "in" for the ``f·m/2`` highest scores and "out"
    for the ``f·m/2`` lowest and abstains on the rest. Trying several fractions spends the
    confidence Bonferroni-style, so the reported maximum is still valid at ``confidence``.
    """
    scores, included = check_membership_labels(scores, included)
    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    level = 1 - (1 - confidence) / len(guess_fractions)
    best = None
    for fraction in guess_fractions:
        k = max(int(fraction * m / 2), 1)
        correct = int(included[order[:k]].sum() + (~included[order[::-1][:k]]).sum())
        eps = epsilon_from_guesses(m, 2 * k, correct, delta, level)
        if best is None or eps > best.epsilon:
            best = EpsilonAudit(eps, m, 2 * k, correct, confidence, delta)
    return best


def one_run_audit(train_and_score: Callable[[np.ndarray], np.ndarray], n_canaries: int, *,
                  delta: float = 0.0, confidence: float = 0.95, seed: int = 0) -> EpsilonAudit:
    """The whole protocol: draw inclusion bits (each canary in with probability ½), call
    ``train_and_score(included)`` once (train with the included canaries, return one score per
    canary), and bound ε from the scores."""
    included = np.random.default_rng(seed).random(n_canaries) < 0.5
    scores = np.asarray(train_and_score(included.copy()), dtype=float)
    return epsilon_lower_bound(scores, included, delta=delta, confidence=confidence)
