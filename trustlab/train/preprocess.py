"""Tabular preprocessing fit on the training split only, stored as JSON with the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from trustlab.errors import DataError


@dataclass
class TabularPreprocessor:
    """One-hot encodes categorical columns and standardises numeric ones.

    Fit on the training split only; `to_dict`/`from_dict` round-trip it through meta.json
    so a checkpoint reproduces its inputs without pickling anything.
    """

    numeric: list[str]
    categorical: list[str]
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, frame: pd.DataFrame) -> "TabularPreprocessor":
        missing = [c for c in self.numeric + self.categorical if c not in frame.columns]
        if missing:
            raise DataError(f"columns {missing} missing from the data (have {list(frame.columns)})")
        for col in self.numeric:
            values = frame[col].astype(float)
            self.means[col] = float(values.mean())
            self.stds[col] = float(values.std(ddof=0)) or 1.0
        for col in self.categorical:
            self.categories[col] = sorted(frame[col].astype(str).unique().tolist())
        return self

    @property
    def feature_names(self) -> list[str]:
        """Names of the encoded columns, numeric first, then `column=value` one-hot columns."""
        names = list(self.numeric)
        for col in self.categorical:
            names += [f"{col}={value}" for value in self.categories[col]]
        return names

    @property
    def feature_groups(self) -> dict[str, list[int]]:
        """Original feature name -> indices of its encoded columns (one-hot groups folded back)."""
        groups: dict[str, list[int]] = {col: [i] for i, col in enumerate(self.numeric)}
        start = len(self.numeric)
        for col in self.categorical:
            width = len(self.categories[col])
            groups[col] = list(range(start, start + width))
            start += width
        return groups

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        if not self.categories and self.categorical:
            raise DataError("the preprocessor is not fitted: call fit() on the training split first")
        blocks = []
        for col in self.numeric:
            values = frame[col].astype(float).to_numpy()
            blocks.append(((values - self.means[col]) / self.stds[col])[:, None])
        for col in self.categorical:
            values = frame[col].astype(str).to_numpy()
            cats = np.asarray(self.categories[col])
            blocks.append((values[:, None] == cats[None, :]).astype(np.float64))
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TabularPreprocessor":
        return cls(**data)
