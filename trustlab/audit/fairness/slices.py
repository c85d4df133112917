"""Weak-slice discovery: exhaustive search over one- and two-feature slices of the raw features.

Numeric features are cut into quantile bins; every slice ``feature = value`` and every pair of
them on two different features with at least ``min_size`` rows is scored by its accuracy and an
exact (Clopper–Pearson) interval. Slices are ranked by the upper end of that interval, so a
slice ranks high only when it is confidently worse than average, not when it is merely tiny.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trustlab.stats import clopper_pearson


@dataclass
class Slice:
    """A subgroup of rows with its accuracy and a 95% exact interval."""

    description: str
    size: int
    accuracy: float
    ci: tuple[float, float]


def _codes(column: pd.Series, n_bins: int) -> tuple[np.ndarray, list[str]]:
    if pd.api.types.is_numeric_dtype(column) and column.nunique() > n_bins:
        binned = pd.qcut(column, q=n_bins, duplicates="drop")
        labels = [f"[{iv.left:g}, {iv.right:g}]" for iv in binned.cat.categories]
        return binned.cat.codes.to_numpy(np.int64), labels
    categorical = column.astype("string").fillna("<missing>").astype("category")
    return categorical.cat.codes.to_numpy(np.int64), [str(c) for c in categorical.cat.categories]


def find_weak_slices(frame: pd.DataFrame, correct: np.ndarray, *, min_size: int = 30,
                     top_k: int = 5, n_bins: int = 4, max_order: int = 2) -> list[Slice]:
    """The ``top_k`` slices whose accuracy is confidently below the overall accuracy."""
    correct = np.asarray(correct, dtype=np.int64)
    overall = correct.mean()
    encoded = {name: _codes(frame[name].reset_index(drop=True), n_bins) for name in frame.columns}
    candidates: list[tuple[str, int, int]] = []
    for order in range(1, max_order + 1):
        for names in itertools.combinations(encoded, order):
            candidates += _scan(names, encoded, correct, min_size)
    slices = []
    for description, size, hits in candidates:
        if hits >= overall * size:
            continue
        low, high = clopper_pearson(hits, size)
        if high < overall:
            slices.append(Slice(description, size, hits / size, (low, high)))
    slices.sort(key=lambda s: s.ci[1])
    distinct: dict[tuple[int, float], Slice] = {}  # one of each set of equivalent slices
    for found in slices:
        distinct.setdefault((found.size, found.accuracy), found)
    return list(distinct.values())[:top_k]


def _scan(names: tuple[str, ...], encoded: dict, correct: np.ndarray,
          min_size: int) -> list[tuple[str, int, int]]:
    """Sizes and correct counts of every slice over ``names`` (one bincount)."""
    key, valid = np.zeros(len(correct), dtype=np.int64), np.ones(len(correct), dtype=bool)
    radix = 1
    for name in names:
        codes, labels = encoded[name]
        key += np.maximum(codes, 0) * radix
        valid &= codes >= 0
        radix *= max(len(labels), 1)
    sizes = np.bincount(key[valid], minlength=radix)
    hits = np.bincount(key[valid], weights=correct[valid], minlength=radix).astype(np.int64)
    found = []
    for cell in np.flatnonzero(sizes >= min_size):
        parts, rest = [], int(cell)
        for name in names:
            labels = encoded[name][1]
            parts.append(f"{name} = {labels[rest % len(labels)]}")
            rest //= len(labels)
        found.append((" and ".join(parts), int(sizes[cell]), int(hits[cell])))
    return found
