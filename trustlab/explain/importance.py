"""Folding one-hot columns back into their original features, and global importance with CIs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trustlab.errors import ConfigError
from trustlab.stats import bootstrap_ci


def fold_groups(attributions: torch.Tensor | np.ndarray,
                groups: dict[str, list[int]]) -> tuple[np.ndarray, list[str]]:
    """Sum the attributions of each original feature's encoded columns: (N, D) → (N, G).

    ``groups`` is ``DataBundle.features.groups`` (feature → encoded column indices). Summing keeps
    IG's completeness: the folded attributions still add up to f(x) − f(baseline).
    """
    values = np.asarray(attributions.detach() if isinstance(attributions, torch.Tensor)
                        else attributions, dtype=float)
    values = values.reshape(len(values), -1)
    covered = sorted(i for columns in groups.values() for i in columns)
    if covered != list(range(values.shape[1])):
        raise ConfigError(f"feature groups cover columns {covered[:5]}… but the attributions have "
                          f"{values.shape[1]} columns: pass the groups of the same data set")
    names = list(groups)
    return np.stack([values[:, groups[n]].sum(axis=1) for n in names], axis=1), names


def feature_mask(groups: dict[str, list[int]], n_columns: int) -> torch.Tensor:
    """Captum ``feature_mask`` (1, D): columns of one original feature share an id."""
    mask = torch.zeros(1, n_columns, dtype=torch.long)
    for index, columns in enumerate(groups.values()):
        mask[0, columns] = index
    return mask


@dataclass
class Importance:
    """Mean |attribution| per feature over a sample, with percentile-bootstrap CIs."""

    names: list[str]
    mean_abs: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray

    def ranked(self) -> list[tuple[str, float, float, float]]:
        order = np.argsort(-self.mean_abs)
        return [(self.names[i], float(self.mean_abs[i]), float(self.ci_low[i]),
                 float(self.ci_high[i])) for i in order]


def global_importance(attributions: np.ndarray, names: list[str], *, n_resamples: int = 500,
                      seed: int = 0) -> Importance:
    """Global importance of each feature: mean |attribution| over rows, bootstrap CI per feature."""
    magnitude = np.abs(np.asarray(attributions, dtype=float).reshape(len(attributions), -1))
    if magnitude.shape[1] != len(names):
        raise ConfigError(f"{magnitude.shape[1]} attribution columns for {len(names)} names")
    bounds = [bootstrap_ci(lambda idx, j=j: magnitude[idx, j].mean(axis=1), len(magnitude),
                           n_resamples=n_resamples, seed=seed) for j in range(len(names))]
    low, high = (np.array(b) for b in zip(*bounds))
    return Importance(list(names), magnitude.mean(axis=0), low, high)
