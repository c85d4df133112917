"""Every zoo architecture: the engine's clipped sums equal a torch.func reference; and the
clipped gradients equal Opacus's own on a small model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dp_reference import (assert_close_sums, engine_clipped_sum,  # noqa: F401
                          float64_default, reference_clipped_sum)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustlab.privacy import fix
from trustlab.train.zoo import InputSpec, available_archs, build_model

TABULAR = InputSpec(shape=[6], n_classes=3, feature_groups=[[0], [1], [2, 3], [4, 5]])
IMAGE = InputSpec(shape=[1, 8, 8], n_classes=3)
SMALL = {"cnn": {"widths": [4, 8], "groups": 2}, "lstm": {"hidden": 8}, "gru": {"hidden": 8},
         "vit": {"patch": 4, "dim": 8, "depth": 1, "heads": 2},
         "ft_transformer": {"dim": 8, "depth": 1, "heads": 2}, "mlp": {"hidden": [8]},
         "autoencoder": {"hidden": [4, 2]}}


@pytest.mark.parametrize("arch", available_archs())
def test_zoo_model_clipped_sum_matches_reference(arch):
    torch.manual_seed(0)
    image = arch in ("cnn", "lstm", "gru", "vit")
    spec = IMAGE if image else TABULAR
    model = fix(build_model(arch, spec, SMALL.get(arch))).double().eval()
    x = torch.randn(5, *spec.shape)
    if arch == "autoencoder":
        def loss(out, target): return F.mse_loss(out, target)
        y = x
    else:
        def loss(out, target): return F.cross_entropy(out, target)
        y = torch.randint(0, 3, (5,))
    want, _ = reference_clipped_sum(model, x, y, loss, 0.5)
    got, _ = engine_clipped_sum(model, x, y, loss, 0.5)
    assert_close_sums(got, want)


def test_clipped_gradients_equal_opacus():
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer as OpacusOptimizer

    from trustlab.privacy import make_private

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, 3))
    x, y = torch.randn(8, 2, 6), torch.randint(0, 3, (8,))
    ours = [model, None]
    theirs = [GradSampleModule(_copy(model)), None]
    ours[1] = torch.optim.SGD(ours[0].parameters(), lr=0.0)
    theirs[1] = OpacusOptimizer(torch.optim.SGD(theirs[0].parameters(), lr=0.0),
                                noise_multiplier=0.0, max_grad_norm=0.3, expected_batch_size=8)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    ours[0], ours[1], _ = make_private(ours[0], ours[1], loader, noise_multiplier=0.0,
                                       max_grad_norm=0.3, target_delta=1e-5,
                                       poisson_sampling=False)
    for net, opt in (ours, theirs):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for a, b in zip(ours[0].parameters(), theirs[0].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)


def _copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model)
