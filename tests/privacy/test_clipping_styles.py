"""Per-layer and automatic clipping: the clipped sums against torch.func per-sample gradients
clipped by hand, each style's bound on a sample's contribution, per-layer clipping against
Opacus's own, the noise's scale and the errors for bad bounds."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from dp_reference import (assert_close_sums, engine_clipped_sum,  # noqa: F401
                          float64_default, per_sample_grads, train_steps)
from test_engine import Tied
from test_vmap_kernel import GateTwice
from trustlab.errors import ConfigError
from trustlab.privacy import DPLSTM, make_private
from trustlab.privacy.tracker import GradSampleTracker


class Reused(nn.Module):
    """One Linear applied twice, and a DP LSTM (whose hidden projection is recorded by the
    recurrence, not by a capture of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.mid = nn.Linear(3, 3)
        self.lstm = DPLSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(torch.tanh(self.mid(x)))
        return self.head(self.lstm(h)[0].mean(1))


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 3))


def _case(name: str) -> tuple[nn.Module, Tensor, Tensor, dict[str, str]]:
    """(model, x, y, each parameter's clipping group) for a named test model."""
    torch.manual_seed(0)
    if name == "tied":
        model = Tied().double()
        x, y = torch.randint(0, 7, (6, 5)), torch.randint(0, 7, (6,))
        groups = {"embed.weight": "tied", "mid.weight": "mid", "mid.bias": "mid"}
    elif name in ("reused", "vmap"):  # vmap: a register_vmap_kernel layer used twice
        model = (Reused() if name == "reused" else GateTwice()).double()
        x = torch.randn(6, 4, 3) if name == "reused" else torch.randn(6, 5)
        y = torch.randint(0, 3, (6,))
        groups = {n: n.rsplit(".", 1)[0] for n, _ in model.named_parameters()}
    else:
        model = conv_net().double()
        x, y = torch.randn(6, 2, 6), torch.randint(0, 3, (6,))
        groups = {n: n.rsplit(".", 1)[0] for n, _ in model.named_parameters()}
    return model, x, y, groups


def _group_norms(model: nn.Module, x: Tensor, y: Tensor, groups: dict[str, str]
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(per-sample gradients by parameter name, per-sample norms by clipping group)."""
    grads = per_sample_grads(model, x, y, F.cross_entropy)
    norms = {group: torch.cat([g.flatten(1) for n, g in grads.items() if groups[n] == group],
                              dim=1).norm(dim=1) for group in dict.fromkeys(groups.values())}
    return grads, norms


def _reference_per_layer(grads: dict[str, Tensor], norms: dict[str, Tensor],
                         groups: dict[str, str], bounds: dict[str, float]) -> dict[str, Tensor]:
    """``sum_i min(1, C_l / (||g_il|| + 1e-6)) g_il`` for each group l, by hand."""
    factors = {group: (bounds[group] / (n + 1e-6)).clamp(max=1.0) for group, n in norms.items()}
    return {n: torch.einsum("b,b...->...", factors[groups[n]], g) for n, g in grads.items()}


@pytest.mark.parametrize("name", ["conv", "tied", "reused", "vmap"])
def test_per_layer_sums_match_reference(name):
    model, x, y, groups = _case(name)
    grads, norms = _group_norms(model, x, y, groups)
    # each group's bound at its median norm: in every group some samples are clipped, some not
    own = {group: n.median().item() for group, n in norms.items()}
    got, _ = engine_clipped_sum(model, x, y, F.cross_entropy, list(own.values()),
                                clipping="per_layer")
    assert_close_sums(got, _reference_per_layer(grads, norms, groups, own))
    # one number C: C / sqrt(G) for each of the G groups
    even = torch.cat(list(norms.values())).median().item()
    got, _ = engine_clipped_sum(model, x, y, F.cross_entropy, even * math.sqrt(len(norms)),
                                clipping="per_layer")
    assert_close_sums(got, _reference_per_layer(grads, norms, groups,
                                                dict.fromkeys(norms, even)))


def test_per_layer_clips_each_layer_in_its_own_backward():
    """The later layers' records are gone (clipped and freed) before the first layer's
    backward runs; a forward pass kept but never backpropagated makes them wait for the end
    of the pass instead, with the same sums."""
    model = conv_net().double()
    x, y = torch.randn(6, 2, 6), torch.randint(0, 3, (6,))
    tracker = GradSampleTracker(model, 1.0, "mean", clipping="per_layer")
    tracker.attach()
    held: list[set] = []

    def backward() -> dict[Tensor, Tensor]:
        tracker.reset()
        h = model[0](x)
        h.register_hook(lambda grad: held.append(set(tracker.records)))
        F.cross_entropy(model[1:](h), y).backward()
        return dict(tracker.summed)

    early = backward()
    kept = model(x)  # its captures await records that will never come
    late = backward()
    tracker.detach()
    later = {m for m in model[1:] if list(m.parameters())}
    assert held[0] == set() and held[1] == later  # nothing held / every later layer
    assert kept.grad_fn is not None and early.keys() == late.keys()
    for p in early:
        torch.testing.assert_close(early[p], late[p], rtol=1e-12, atol=0)


def test_automatic_sums_match_reference():
    model, x, y, _ = _case("conv")
    grads = per_sample_grads(model, x, y, F.cross_entropy)
    norms = torch.cat([g.flatten(1) for g in grads.values()], dim=1).norm(dim=1)
    bound = norms.median().item()
    factors = bound / (norms + 0.01)
    want = {n: torch.einsum("b,b...->...", factors, g) for n, g in grads.items()}
    got, _ = engine_clipped_sum(model, x, y, F.cross_entropy, bound, clipping="automatic")
    assert_close_sums(got, want)
    assert (factors > 1).any() and (factors < 1).any()  # small samples scaled up, large down


@pytest.mark.parametrize("clipping", ["per_layer", "automatic"])
def test_one_huge_sample_stays_within_each_bound(clipping):
    """A sample with a huge gradient alone: its clipped gradient is within the bound, layer by
    layer under per-layer clipping (C / sqrt(5) each for the conv net's 5 layers)."""
    model = conv_net().double()
    x, y = torch.randn(1, 2, 6) * 1e4, torch.tensor([2])
    got, _ = engine_clipped_sum(model, x, y, F.cross_entropy, 0.7, clipping=clipping)
    layers = {n.rsplit(".", 1)[0] for n in got}
    by_layer = {layer: math.sqrt(sum(float(s.square().sum()) for n, s in got.items()
                                     if n.rsplit(".", 1)[0] == layer)) for layer in layers}
    total = math.sqrt(sum(v * v for v in by_layer.values()))
    assert total <= 0.7 * (1 + 1e-6)
    if clipping == "per_layer":
        assert max(by_layer.values()) <= 0.7 / math.sqrt(len(layers)) * (1 + 1e-6)
        assert min(by_layer.values()) >= 0.7 / math.sqrt(len(layers)) * 0.99  # all clipped


def test_per_layer_equals_opacus_on_bias_free_layers():
    """Opacus clips each parameter tensor on its own; without biases that is each layer."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPPerLayerOptimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, 8, bias=False), nn.Tanh(), nn.Linear(8, 3, bias=False))
    x, y = torch.randn(8, 2, 6), torch.randint(0, 3, (8,))
    bounds = [0.05, 0.2, 0.1]
    theirs = GradSampleModule(copy.deepcopy(model))
    their_opt = DPPerLayerOptimizer(torch.optim.SGD(theirs.parameters(), lr=0.0),
                                    noise_multiplier=0.0, max_grad_norm=bounds,
                                    expected_batch_size=8)
    _, our_opt, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0),
                                 DataLoader(TensorDataset(x, y), batch_size=8),
                                 noise_multiplier=0.0, max_grad_norm=bounds, target_delta=1e-5,
                                 poisson_sampling=False, clipping="per_layer")
    for net, opt in ((model, our_opt), (theirs, their_opt)):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for a, b in zip(model.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)
    assert our_opt.max_grad_norm == pytest.approx(their_opt.max_grad_norm)


def _private(clipping: str, max_grad_norm, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 2, (64,)))
    return make_private(model, torch.optim.SGD(model.parameters(), lr=0.1),
                        DataLoader(data, batch_size=16), noise_multiplier=1.0,
                        max_grad_norm=max_grad_norm, target_delta=1e-5, noise_seed=0,
                        poisson_sampling=False, clipping=clipping, **kwargs)


def test_per_layer_noise_is_scaled_to_the_norm_of_the_bounds():
    model, opt, _ = _private("per_layer", [0.3, 0.4])
    draws = []
    for _ in range(40):  # no backward: pure noise
        opt.zero_grad()
        opt.step()
        draws += [p.grad.flatten() * opt.expected_batch_size for p in model.parameters()]
    noise = torch.cat(draws)
    assert abs(noise.std().item() / 0.5 - 1) < 4 / (2 * noise.numel()) ** 0.5  # σ·√(.3²+.4²)
    facts = opt.privacy_facts(1e-5)
    assert facts.clipping == "per_layer" and facts.max_grad_norm == pytest.approx(0.5)


def test_automatic_clipping_trains_and_records_its_style():
    model, opt, loader = _private("automatic", 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    train_steps(model, opt, loader)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.privacy_facts(1e-5).clipping == "automatic"


@pytest.mark.parametrize("clipping, bound, message", [
    ("per_layer", [0.5], r"one max_grad_norm per clipping group, 2 in this order: \['0', '2'\]"),
    ("per_layer", [0.5, -1.0], "max_grad_norm of '2' must be a finite number > 0"),
    ("per_layer", float("inf"), "must be a finite number > 0"),
    ("automatic", [0.5, 0.5], "one bound per layer needs clipping='per_layer'"),
    ("flat", 0.0, "max_grad_norm must be a finite number > 0"),
])
def test_bad_bounds_are_clear_errors(clipping, bound, message):
    with pytest.raises(ConfigError, match=message):
        _private(clipping, bound)
