"""Sanity checks: the randomisation test separates, and the rank correlation is Spearman's."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from trustlab.explain import Explainer, predicted_target
from trustlab.explain.sanity import (cascade_layers, parameter_randomisation, randomise_layers,
                                     rank_correlation, repeatability)


def saliency(model, inputs, target):
    return Explainer(model, "Saliency").attribute(inputs, target)


def test_saliency_randomisation_test_separates_on_the_digits_cnn(digits_cnn):
    model = digits_cnn.clean_model()
    inputs = torch.from_numpy(digits_cnn.split("test").X[:32])
    target = predicted_target(model, inputs)
    cascade = parameter_randomisation(saliency, model, inputs, target, max_stages=3)
    assert cascade.fully_randomised < 0.5
    assert repeatability(saliency, model, inputs, target).mean() > 0.95
    assert cascade.layers[0] == "head" and len(cascade.layers) == 3


def test_rank_correlation_is_spearman_per_example():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 30)), rng.normal(size=(5, 30))
    b[0] = a[0] * 2 + 0.1 * b[0]
    expected = [spearmanr(np.abs(x), np.abs(y))[0] for x, y in zip(a, b)]
    np.testing.assert_allclose(rank_correlation(a, b), expected)
    assert rank_correlation(np.ones((1, 4)), a[:1, :4])[0] == 0.0  # constant map: no ranking


def test_randomise_layers_leaves_the_model_untouched(small_model):
    model, _ = small_model("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    order = cascade_layers(model)
    assert order == ["6", "3", "0"]  # output layer first
    clone = randomise_layers(model, order[:1], seed=1)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not torch.equal(clone.state_dict()["6.weight"], before["6.weight"])
    torch.testing.assert_close(clone.state_dict()["0.weight"], before["0.weight"])
