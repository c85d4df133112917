"""Every zoo model: forward and backward on a batch, DP-compatible layers, config errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustlab.errors import ConfigError
from trustlab.train.data import load_dataset
from trustlab.train.trainer import input_spec_for
from trustlab.train.zoo import arch_info, available_archs, build_model

DATASET = {"tabular": "german", "image": "digits"}


@pytest.fixture(scope="module")
def bundles():
    return {m: load_dataset(d) for m, d in DATASET.items()}


@pytest.mark.parametrize("arch", available_archs())
def test_forward_backward(arch, bundles):
    info = arch_info(arch)
    data = bundles[info.modality]
    torch.manual_seed(0)
    model = build_model(arch, input_spec_for(data))
    x = torch.from_numpy(data.splits["train"].X[:16])
    out = model(x)
    if info.task == "reconstruction":
        assert out.shape == x.shape
        loss = nn.functional.mse_loss(out, x)
    else:
        assert out.shape == (16, data.n_classes)
        loss = nn.functional.cross_entropy(out, torch.from_numpy(data.splits["train"].y[:16]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("arch", available_archs())
def test_no_batch_norm(arch, bundles):
    data = bundles[arch_info(arch).modality]
    model = build_model(arch, input_spec_for(data))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("arch", available_archs())
def test_outputs_do_not_depend_on_batch_composition(arch, bundles):
    """No cross-sample layer (which would break per-sample gradients): row i's output is the
    same alone and in a batch."""
    data = bundles[arch_info(arch).modality]
    model = build_model(arch, input_spec_for(data)).eval()
    x = torch.from_numpy(data.splits["train"].X[:8])
    torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=1e-4, atol=1e-5)


def test_unknown_arch_and_config_key():
    data = load_dataset("german")
    with pytest.raises(ConfigError, match="unknown arch 'resnet152'"):
        build_model("resnet152", input_spec_for(data))
    with pytest.raises(ConfigError, match="unknown config key.*'width'"):
        build_model("mlp", input_spec_for(data), {"width": 3})
