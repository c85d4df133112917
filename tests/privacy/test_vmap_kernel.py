"""Custom layers opted in with register_vmap_kernel against torch.func per-sample references."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp_reference import float64_default  # noqa: F401
from test_engine import SeqHead, check
from trustlab.errors import ConfigError, TrustlabError
from trustlab.kernels import kernel_for, register_vmap_kernel
from trustlab.privacy import make_private


@register_vmap_kernel
class Gate(nn.Module):
    """``tanh(x * w) * sigmoid(v) + b`` over the last dim: parameters no kernel covers."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(width))
        self.v = nn.Parameter(torch.randn(width))
        self.b = nn.Parameter(torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * self.w) * torch.sigmoid(self.v) + self.b


class GateTwice(nn.Module):
    """Linear, one Gate used twice (its records add up), Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.gate, self.out = nn.Linear(5, 6), Gate(6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gate(self.gate(self.inp(x))))


def test_registered_layer_matches_reference_also_used_twice():
    """Its own per-sample gradients, and the input gradient it passes on (which the first
    Linear's per-sample gradients are made of), equal torch.func's."""
    torch.manual_seed(0)
    check(GateTwice(), torch.randn(6, 5), torch.randint(0, 3, (6,)))


def test_registered_layer_on_sequences_with_a_frozen_parameter():
    torch.manual_seed(1)
    model = SeqHead(nn.Sequential(nn.Linear(4, 6), Gate(6)), 6)
    model.body[1].v.requires_grad_(False)
    check(model, torch.randn(5, 7, 4), torch.randint(0, 3, (5,)))


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * self.w + y


def _private(model: nn.Module) -> nn.Module:
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 4, (8,))), batch_size=4)
    return make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                        noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5)[0]


def test_registered_layer_with_trainable_sub_layers_is_refused():
    register_vmap_kernel(Wrapper)
    with pytest.raises(ConfigError, match=r"0 \(Wrapper\).*trainable sub-layers \(inner.weight, "
                                          r"inner.bias\)"):
        _private(nn.Sequential(Wrapper()))


def test_registered_layer_called_with_two_tensors_is_refused():
    register_vmap_kernel(TwoInputs)
    model = _private(TwoInputs())
    with pytest.raises(TypeError, match="TwoInputs .* called with 2 positional"):
        model(torch.randn(4, 4), torch.randn(4, 4))


def test_register_vmap_kernel_takes_a_module_class():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_vmap_kernel(Gate(3))  # type: ignore[arg-type]


class ScaledLinear(nn.Linear):
    """A Linear whose forward is its own: the Linear kernel would train nn.Linear instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x)) * 2


def test_a_subclass_overriding_a_kernels_forward_is_refused_then_covered_when_registered():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 4), ScaledLinear(4, 3))
    with pytest.raises(ConfigError, match=r"1 \(ScaledLinear\): it overrides nn.Linear's "
                                          r"forward.*register_vmap_kernel\(ScaledLinear\)"):
        _private(model)
    register_vmap_kernel(ScaledLinear)
    check(model, torch.randn(6, 5), torch.randint(0, 3, (6,)))


class StandardisedConv(nn.Conv2d):
    """Weight standardisation in _conv_forward (forward is nn.Conv2d's): the Conv2d kernel,
    which convolves with layer.weight itself, would train a plain convolution."""

    def _conv_forward(self, x, weight, bias):
        weight = (weight - weight.mean((1, 2, 3), keepdim=True)) / (
            weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return super()._conv_forward(x, weight, bias)


def test_a_conv_subclass_overriding_conv_forward_is_refused_then_covered_when_registered():
    torch.manual_seed(4)
    model = nn.Sequential(StandardisedConv(2, 3, 3), nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ConfigError, match=r"0 \(StandardisedConv\): it overrides nn.Conv2d's "
                                          r"_conv_forward"):
        _private(model)
    register_vmap_kernel(StandardisedConv)
    check(model, torch.randn(5, 2, 4, 4), torch.randint(0, 3, (5,)))


def test_a_subclass_keeping_the_forward_keeps_the_kernel():
    class PlainSubclass(nn.Linear):
        pass

    torch.manual_seed(3)
    check(nn.Sequential(PlainSubclass(5, 4), nn.ReLU(), nn.Linear(4, 3)), torch.randn(6, 5),
          torch.randint(0, 3, (6,)))
    assert type(kernel_for(PlainSubclass(2, 2))).__name__ == "LinearKernel"


@register_vmap_kernel
class NoisyGate(Gate):
    """A Gate with dropout inside its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(super().forward(x), 0.5, self.training)


def test_a_registered_layer_drawing_random_numbers_is_refused_naming_it():
    """Recomputing one sample's forward draws a new dropout mask: torch.func's own error said
    only 'called random operation while in randomness error mode'."""
    model = nn.Sequential(nn.Linear(4, 4), NoisyGate(4))
    loader = DataLoader(TensorDataset(torch.randn(4, 4), torch.randint(0, 4, (4,))), batch_size=4)
    model, opt, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                                 noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5,
                                 poisson_sampling=False)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 4)), torch.randint(0, 4, (4,)))
    with pytest.raises(TrustlabError, match="NoisyGate.*draws random numbers"):
        loss.backward()  # the clipping runs at the end of the backward pass
        opt.step()
