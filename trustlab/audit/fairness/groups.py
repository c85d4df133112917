"""Sensitive groupings of a split: one per sensitive feature and one per pair (intersection).

Bad input never raises here: a missing column, missing values or a one-member group become
``problems`` (messages for findings) so that the rest of the audit still runs.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trustlab.train.data import Split

INTERSECTION = "_x_"  # joins feature names and group labels: sex_x_race, Female_x_White
MISSING = {"", "nan", "none", "null", "na", "<na>", "?"}
MAX_GROUPS = 50
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-<>=+]")


@dataclass
class Grouping:
    """Rows of one split partitioned by a sensitive feature (or an intersection of them).

    ``codes`` is -1 for rows whose value is missing; ``labels`` are metric-name-safe group
    names; ``small`` lists groups below the minimum size (reported, excluded from disparities).
    """

    name: str
    codes: np.ndarray
    labels: list[str]
    features: tuple[str, ...] = ()
    small: list[str] = field(default_factory=list)

    @property
    def valid(self) -> np.ndarray:
        return self.codes >= 0

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.codes[self.valid], minlength=len(self.labels))

    def values(self) -> np.ndarray:
        """Group label per valid row (what fairlearn's ``sensitive_features`` receives)."""
        return np.asarray(self.labels, dtype=object)[self.codes[self.valid]]

    def large_enough(self) -> np.ndarray:
        """Boolean per group: at or above the minimum size."""
        return ~np.isin(self.labels, self.small)


def safe_label(value: str) -> str:
    """A group value as a metric-name part: characters outside [A-Za-z0-9_-<>=+] become '_'."""
    return _UNSAFE.sub("_", str(value).strip()) or "_"


def raw_column(split: Split, feature: str) -> pd.Series | None:
    """The raw values of ``feature`` in ``split``: the sensitive table first, then the frame."""
    if feature in split.sensitive.columns:
        return split.sensitive[feature].reset_index(drop=True)
    if split.frame is not None and feature in split.frame.columns:
        return split.frame[feature].reset_index(drop=True)
    return None


def available_features(split: Split) -> list[str]:
    frame_columns = list(split.frame.columns) if split.frame is not None else []
    return list(dict.fromkeys([*split.sensitive.columns, *frame_columns]))


def _encode(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    text = values.astype("string").str.strip()
    missing = text.isna() | text.str.lower().isin(MISSING)
    text = text.where(~missing, None)
    categories = sorted(text.dropna().unique())
    lookup = {value: i for i, value in enumerate(categories)}
    codes = np.array([-1 if v is None or pd.isna(v) else lookup[v] for v in text], dtype=np.int64)
    return codes, _unique_safe(categories)


def _unique_safe(values: list[str]) -> list[str]:
    labels: list[str] = []
    for value in values:
        label, k = safe_label(value), 1
        while label in labels:
            label, k = f"{safe_label(value)}-{k}", k + 1
        labels.append(label)
    return labels


def build_groupings(split: Split, features: list[str], *, min_group_size: int,
                    intersections: bool = True) -> tuple[list[Grouping], list[str]]:
    """Groupings for each usable feature and each pair of them, plus problem messages."""
    problems: list[str] = []
    singles: list[tuple[tuple[str, ...], np.ndarray, list[str]]] = []
    for feature in features:
        column = raw_column(split, feature)
        if column is None:
            problems.append(f"sensitive feature {feature!r} is not in the data; available "
                            f"columns: {', '.join(available_features(split))}. Name one of them "
                            "in the auditor's sensitive_features parameter")
            continue
        codes, labels = _encode(column)
        n_missing = int((codes < 0).sum())
        if n_missing == len(codes):
            problems.append(f"sensitive feature {feature!r} has no values (all {n_missing} rows "
                            "are missing): it was skipped")
            continue
        if n_missing:
            problems.append(f"sensitive feature {feature!r} is missing (NaN/empty) in {n_missing} "
                            f"of {len(codes)} rows: those rows are left out of its groups")
        if len(labels) > MAX_GROUPS:
            problems.append(f"sensitive feature {feature!r} has {len(labels)} distinct values "
                            f"(more than {MAX_GROUPS}): bin it into groups first; it was skipped")
            continue
        if len(labels) < 2:
            problems.append(f"sensitive feature {feature!r} has a single group "
                            f"({labels[0]!r}) in this split: no disparity can be measured")
        singles.append(((feature,), codes, labels))
    pairs = itertools.combinations(singles, 2) if intersections else ()
    combined = [_intersect(a, b) for a, b in pairs]
    groupings = [_finish(names, codes, labels, min_group_size, problems)
                 for names, codes, labels in [*singles, *combined]]
    return groupings, problems


def _intersect(a: tuple, b: tuple) -> tuple[tuple[str, ...], np.ndarray, list[str]]:
    (names_a, codes_a, labels_a), (names_b, codes_b, labels_b) = a, b
    joint = np.where((codes_a >= 0) & (codes_b >= 0), codes_a * len(labels_b) + codes_b, -1)
    present = np.unique(joint[joint >= 0])
    remap = np.full(len(labels_a) * len(labels_b), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    codes = np.where(joint >= 0, remap[np.maximum(joint, 0)], -1)
    labels = [f"{labels_a[p // len(labels_b)]}{INTERSECTION}{labels_b[p % len(labels_b)]}"
              for p in present]
    return (*names_a, *names_b), codes, labels


def _finish(features: tuple[str, ...], codes: np.ndarray, labels: list[str],
            min_group_size: int, problems: list[str]) -> Grouping:
    name = INTERSECTION.join(safe_label(f) for f in features)
    grouping = Grouping(name, codes, labels, features)
    sizes = grouping.sizes
    grouping.small = [label for label, size in zip(labels, sizes) if size < min_group_size]
    if grouping.small:
        listed = ", ".join(f"{label} (n={size})" for label, size in zip(labels, sizes)
                           if size < min_group_size)
        problems.append(f"{name}: group(s) below the minimum size {min_group_size}: {listed}. "
                        "Their metrics are reported but they are left out of the disparities")
    return grouping
