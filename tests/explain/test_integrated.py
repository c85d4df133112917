"""Adaptive IG meets the completeness bound on every zoo classifier and agrees with Captum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustlab.errors import ConfigError
from trustlab.explain import adaptive_integrated_gradients, predicted_target
from trustlab.explain.integrated import integrated_gradients

TOL = 1e-2


def test_completeness_on_every_small_zoo_arch(zoo_arch, small_model):
    model, inputs = small_model(zoo_arch)
    result = adaptive_integrated_gradients(model, inputs, predicted_target(model, inputs), tol=TOL)
    assert result.worst_relative_gap < TOL
    # the reported delta is the real one: Σ attributions − (f(x) − f(b)), recomputed here
    with torch.no_grad():
        rows = torch.arange(len(inputs))
        target = predicted_target(model, inputs)
        change = model(inputs)[rows, target] - model(torch.zeros_like(inputs))[rows, target]
    gap = result.attributions.reshape(len(inputs), -1).sum(dim=1) - change
    np.testing.assert_allclose(result.delta, gap.double().numpy(), atol=1e-4)


@pytest.mark.parametrize("fixture", ["digits_cnn", "adult_mlp"])
def test_completeness_on_the_trained_fixtures(fixture, request):
    subject = request.getfixturevalue(fixture)
    model = subject.clean_model()
    inputs = torch.from_numpy(subject.split("test").X[:24])
    result = adaptive_integrated_gradients(model, inputs, predicted_target(model, inputs), tol=TOL)
    assert result.worst_relative_gap < TOL
    assert result.judged.sum() >= 20


def test_steps_adapt_per_example_where_captum_default_fails(digits_cnn):
    model = digits_cnn.clean_model()
    inputs = torch.from_numpy(digits_cnn.split("test").X[:40])
    target = predicted_target(model, inputs)
    default = integrated_gradients(model, inputs, target, n_steps=50)
    adaptive = adaptive_integrated_gradients(model, inputs, target, tol=TOL)
    assert default.worst_relative_gap > TOL  # a uniform 50 steps is not enough here…
    assert adaptive.worst_relative_gap < TOL  # …adaptive steps are
    assert adaptive.steps.min() < 50 < adaptive.steps.max()
    assert adaptive.steps.sum() < 50 * len(inputs) * 2


def test_adaptive_agrees_with_captum_at_many_steps(small_model):
    model, inputs = small_model("ft_transformer")
    target = predicted_target(model, inputs)
    reference = integrated_gradients(model, inputs, target, n_steps=400).attributions
    ours = adaptive_integrated_gradients(model, inputs, target, tol=1e-4).attributions
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-4 * reference.abs().max())


def test_bad_parameters():
    model = torch.nn.Linear(3, 2).eval()
    with pytest.raises(ConfigError, match="tol > 0"):
        adaptive_integrated_gradients(model, torch.rand(2, 3), 0, tol=0)
    with pytest.raises(ConfigError, match="target has 3 entries for 2 inputs"):
        adaptive_integrated_gradients(model, torch.rand(2, 3), torch.tensor([0, 1, 0]))
