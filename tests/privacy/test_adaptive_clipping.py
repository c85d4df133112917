"""Adaptive clipping (Andrew et al. 2021): the bound's update against the formula on reference
per-sample norms, its settling at the target quantile, the split of the noise, bad options."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp_reference import float64_default, reference_clipped_sum, train_steps  # noqa: F401
from trustlab.errors import ConfigError
from trustlab.privacy import compute_epsilon, make_private


def _setup(batch: int = 16, lr: float = 0.1, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 2, (64,)))
    args = dict(noise_multiplier=1.0, max_grad_norm=0.5, target_delta=1e-5, noise_seed=0,
                poisson_sampling=False, clipping="adaptive")
    return make_private(model, torch.optim.SGD(model.parameters(), lr=lr),
                        DataLoader(data, batch_size=batch), **{**args, **kwargs})


def _norms(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    """Reference per-sample gradient norms of the loader's first batch (on a plain copy)."""
    x, y = next(iter(loader))
    return reference_clipped_sum(copy.deepcopy(model), x, y, F.cross_entropy, 1.0)[1]


def test_bound_moves_by_the_formula_from_the_per_sample_norms():
    model, _, loader = _setup()  # the model every _setup builds: a bound among its norms
    bound = _norms(model, loader).quantile(0.7).item()  # 70% of the samples within it
    model, opt, loader = _setup(max_grad_norm=bound, noise_multiplier=0.0,
                                unclipped_num_std=1e-9, clipbound_learning_rate=0.3,
                                target_unclipped_quantile=0.5)
    unclipped = (_norms(model, loader) + 1e-6 <= bound).double().mean().item()
    x, y = next(iter(loader))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert 0 < unclipped < 1  # the case is informative
    want = bound * math.exp(-0.3 * (unclipped - 0.5))
    assert opt.max_grad_norm == pytest.approx(want, rel=1e-6)


def test_bound_settles_at_the_target_quantile():
    """A frozen model (lr 0): the norms stay put, and the noisy bound must end near their 30%
    quantile from 20 times too high."""
    model, opt, loader = _setup(batch=64, lr=0.0, max_grad_norm=20.0,
                                target_unclipped_quantile=0.3)
    for _ in range(300):
        train_steps(model, opt, loader)
    fraction = (_norms(model, loader) <= opt.max_grad_norm).double().mean().item()
    assert abs(fraction - 0.3) <= 0.1, (fraction, opt.max_grad_norm)


def test_gradient_gets_the_adjusted_noise_and_the_accountant_sigma():
    model, opt, _ = _setup(noise_multiplier=1.0, unclipped_num_std=1.0,
                           clipbound_learning_rate=0.0)
    adjusted = (1.0 - (2 * 1.0) ** -2) ** -0.5  # (σ⁻² - (2σ_b)⁻²)^(-1/2)
    assert opt.gradient_noise_multiplier == pytest.approx(adjusted)
    draws = []
    for _ in range(40):  # no backward: pure noise; the bound stays at 0.5 (learning rate 0)
        opt.zero_grad()
        opt.step()
        draws += [p.grad.flatten() * opt.expected_batch_size for p in model.parameters()]
    noise = torch.cat(draws)
    assert abs(noise.std().item() / (adjusted * 0.5) - 1) < 4 / (2 * noise.numel()) ** 0.5
    assert opt.epsilon(1e-5) == pytest.approx(compute_epsilon(1.0, 0.25, 40, 1e-5), rel=1e-9)
    facts = opt.privacy_facts(1e-5)
    assert facts.clipping == "adaptive" and facts.noise_multiplier == 1.0


def test_count_noise_too_small_is_refused_before_the_model_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 2))
    loader = DataLoader(TensorDataset(torch.randn(8, 5), torch.randint(0, 2, (8,))), batch_size=4)
    with pytest.raises(ConfigError, match="unclipped_num_std > noise_multiplier / 2"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                     noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5,
                     clipping="adaptive", unclipped_num_std=0.5)
    assert type(model[0]) is nn.Linear  # not tapped


@pytest.mark.parametrize("options, message", [
    ({"clipping": "per-layer"}, "clipping must be one of flat, per_layer, automatic, adaptive"),
    ({"max_grad_norm": [0.5, 0.5]}, "needs clipping='per_layer'"),
    ({"target_unclipped_quantile": 1.5}, r"in \(0, 1\)"),
    ({"clipbound_learning_rate": -1.0}, "clipbound_learning_rate must be >= 0"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        _setup(**options)


def test_state_dict_keeps_the_bound():
    model, opt, loader = _setup()
    train_steps(model, opt, loader)
    assert opt.max_grad_norm != 0.5
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    _, resumed, _ = _setup()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.max_grad_norm == opt.max_grad_norm
