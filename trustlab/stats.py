"""Confidence intervals shared by every auditor: exact binomial and percentile bootstrap."""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial proportion; (0, 1) when trials == 0."""
    if trials <= 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    low = stats.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes > 0 else 0.0
    high = (stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
            if successes < trials else 1.0)
    return float(low), float(high)


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n: int, *, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0,
                 strata: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap of ``statistic(indices)``, vectorised over resamples.

    ``statistic`` takes an int array of shape (n_resamples, n) of row indices and returns one
    value per resample. With ``strata``, rows are resampled within each stratum (group sizes
    stay fixed), as for disaggregated metrics.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        indices = rng.integers(0, n, size=(n_resamples, n))
    else:
        parts = []
        for value in np.unique(strata):
            members = np.flatnonzero(strata == value)
            parts.append(members[rng.integers(0, len(members), size=(n_resamples, len(members)))])
        indices = np.concatenate(parts, axis=1)
    return percentile_interval(statistic(indices), confidence)


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``values`` (non-finite ones ignored; NaN if none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def bootstrap_counts(counts: np.ndarray, *, n_resamples: int = 1000,
                     seed: int = 0) -> np.ndarray:
    """Stratified bootstrap of categorical rows, drawn as cell counts.

    ``counts`` has shape (strata, cells): how many rows of each stratum fall in each cell (e.g.
    the four confusion-matrix cells per group). Resampling a stratum's rows with replacement
    gives cell counts ~ Multinomial(n_stratum, observed shares), so this draws those directly:
    the same distribution as :func:`bootstrap_ci` with ``strata``, in O(resamples x cells)
    instead of O(resamples x rows). Returns an int array (n_resamples, strata, cells).
    """
    counts = np.asarray(counts, dtype=np.int64)
    rng = np.random.default_rng(seed)
    totals = counts.sum(axis=1)
    shares = counts / np.maximum(totals, 1)[:, None]
    draws = np.zeros((n_resamples, *counts.shape), dtype=np.int64)
    for stratum, (total, share) in enumerate(zip(totals, shares)):
        if total > 0:
            draws[:, stratum] = rng.multinomial(total, share, size=n_resamples)
    return draws
