"""Attribute inference: a model that reveals the attribute must give ART's attack an advantage
over the no-model baseline; one that does not, none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trustlab.attacks.attribute import attribute_columns, attribute_inference
from trustlab.attacks.membership import art_classifier
from trustlab.errors import DataError


class _Reveals(nn.Module):
    """Predicts class 1 exactly when the attribute's second one-hot column is set."""

    def __init__(self, column: int | None) -> None:
        super().__init__()
        self.column = column
        self.dummy = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        signal = x[:, self.column] if self.column is not None else x[:, 0] > 0
        return torch.stack([1 - signal.float(), signal.float()], dim=1) * 5


def _data(n: int = 1000):
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(n, 4)).astype(np.float32)
    attribute = rng.integers(0, 2, n)
    X = np.column_stack([noise, np.eye(2, dtype=np.float32)[attribute]])
    return X, (noise[:, 0] > 0).astype(np.int64)


@pytest.mark.parametrize("leaks", [True, False])
def test_attack_advantage_only_when_the_model_reveals_the_attribute(leaks: bool) -> None:
    X, y = _data()
    columns = attribute_columns({"noise": [0, 1, 2, 3], "sex": [4, 5]}, "sex")
    classifier = art_classifier(_Reveals(5 if leaks else None).eval(), (6,), 2)
    leak = attribute_inference(classifier, X, y, columns, "sex")
    assert abs(leak.baseline_accuracy - 0.5) < 0.08
    if leaks:
        assert leak.attack_accuracy > 0.95 and leak.advantage > 0.4
    else:
        assert abs(leak.advantage) < 0.08


def test_non_contiguous_columns_rejected() -> None:
    with pytest.raises(DataError, match="not contiguous"):
        attribute_columns({"race": [3, 7]}, "race")
