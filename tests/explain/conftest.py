"""Small untrained zoo models for the architectures without a trained fixture (fast to build)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustlab.train.zoo import InputSpec, build_model

IMAGE = InputSpec(shape=[1, 8, 8], n_classes=10)
TABULAR = InputSpec(shape=[6], n_classes=2, feature_groups=[[0], [1], [2, 3, 4], [5]])
SMALL = {
    "mlp": (TABULAR, {"hidden": [16, 16]}),
    "ft_transformer": (TABULAR, {"dim": 16, "depth": 1, "heads": 2}),
    "cnn": (IMAGE, {"widths": [8, 16], "groups": 4}),
    "lstm": (IMAGE, {"hidden": 16}),
    "gru": (IMAGE, {"hidden": 16}),
    "vit": (IMAGE, {"dim": 16, "depth": 2, "heads": 2}),
}


def build_small(arch: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """An untrained small ``arch`` in eval mode and 12 inputs for it."""
    spec, config = SMALL[arch]
    torch.manual_seed(seed)
    model = build_model(arch, spec, config).eval()
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(12, *spec.shape, generator=generator)
    return model, inputs


@pytest.fixture(params=sorted(SMALL))
def zoo_arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def small_model():
    """``small_model(arch, seed=0) -> (model, inputs)``: an untrained small zoo model."""
    return build_small
