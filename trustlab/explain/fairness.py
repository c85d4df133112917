"""Fairness × explanation: how much attribution mass falls on sensitive features and their proxies.

A proxy is a feature that predicts the sensitive attribute on its own (AUC of a one-feature
logistic regression on held-out rows). Attribution shares are folded to original features and
normalised per example (|a_f| / Σ|a|), then averaged per sensitive group with bootstrap CIs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from trustlab.errors import ConfigError
from trustlab.stats import bootstrap_ci
from trustlab.train.data import DataBundle


def proxy_strength(data: DataBundle, attribute: str, *, max_rows: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """For every non-sensitive original feature, the held-out AUC (one-vs-rest macro for more
    than two groups) of predicting ``attribute`` from that feature alone."""
    train = data.splits["train"]
    if attribute not in train.sensitive:
        raise ConfigError(f"unknown sensitive attribute {attribute!r}; the data has "
                          f"{list(train.sensitive.columns)}")
    rows = np.random.default_rng(seed).permutation(len(train))[:max_rows]
    labels = train.sensitive[attribute].to_numpy()[rows]
    half = len(rows) // 2
    if len(np.unique(labels[:half])) < 2 or len(np.unique(labels[half:])) < 2:
        return {}  # a single group: nothing can predict it
    strength = {}
    for name, columns in data.features.groups.items():
        if name in data.features.sensitive:
            continue
        X = train.X[rows][:, columns]
        model = LogisticRegression(max_iter=200).fit(X[:half], labels[:half])
        strength[name] = _auc(labels[half:], model.predict_proba(X[half:]), model.classes_)
    return strength


def _auc(labels: np.ndarray, probs: np.ndarray, classes: np.ndarray) -> float:
    seen = np.isin(labels, classes)
    labels, probs = labels[seen], probs[seen]
    if len(classes) == 2:
        return float(roc_auc_score(labels == classes[1], probs[:, 1]))
    present = [i for i, c in enumerate(classes) if 0 < (labels == c).sum() < len(labels)]
    return float(np.mean([roc_auc_score(labels == classes[i], probs[:, i]) for i in present]))


@dataclass
class Reliance:
    """Mean attribution share on the attribute (and on its proxies), overall and per group."""

    attribute: str
    proxies: list[tuple[str, float]]  # (feature, AUC), strongest first
    share: float  # mean share of |attribution| on the attribute itself (0 if not an input)
    proxy_share: float
    by_group: dict[str, dict[str, float]]  # group -> share, share_ci_low/high, proxy_share, n


def attribution_shares(folded: np.ndarray, names: list[str],
                       features: list[str]) -> np.ndarray:
    """Per-example share of total |attribution| that falls on ``features``."""
    magnitude = np.abs(folded)
    total = magnitude.sum(axis=1)
    picked = magnitude[:, [names.index(f) for f in features if f in names]].sum(axis=1)
    return np.divide(picked, total, out=np.zeros_like(picked), where=total > 0)


def sensitive_reliance(folded: np.ndarray, names: list[str], groups: np.ndarray,
                       attribute: str, strength: dict[str, float], *, n_proxies: int = 3,
                       min_auc: float = 0.6, n_resamples: int = 500, seed: int = 0) -> Reliance:
    """Attribution share on ``attribute`` and its ≤ ``n_proxies`` strongest proxies (AUC ≥
    ``min_auc``), overall and per value of ``groups`` (the attribute of each explained row)."""
    proxies = [(f, a) for f, a in sorted(strength.items(), key=lambda t: -t[1])
               if a >= min_auc][:n_proxies]
    own = attribution_shares(folded, names, [attribute])
    proxy = attribution_shares(folded, names, [f for f, _ in proxies])
    by_group = {}
    for value in np.unique(groups):
        members = np.flatnonzero(groups == value)
        low, high = bootstrap_ci(lambda idx: own[members][idx].mean(axis=1), len(members),
                                 n_resamples=n_resamples, seed=seed)
        by_group[str(value)] = {"share": float(own[members].mean()), "share_ci_low": low,
                                "share_ci_high": high,
                                "proxy_share": float(proxy[members].mean()),
                                "n": int(len(members))}
    return Reliance(attribute, proxies, float(own.mean()), float(proxy.mean()), by_group)
