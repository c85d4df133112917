"""Deletion/insertion curves against a naive loop, IG beats random, Captum metrics pass through."""

from __future__ import annotations

import numpy as np
import torch
from captum.metrics import infidelity

from trustlab.explain import adaptive_integrated_gradients, predicted_target
from trustlab.explain.faithfulness import (attribution_infidelity, deletion_insertion,
                                           gaussian_perturbation, random_attributions,
                                           rank_methods)
from trustlab.explain.methods import seeded


def test_ig_deletion_auc_beats_a_random_ranking_on_digits(digits_cnn):
    model = digits_cnn.clean_model()
    inputs = torch.from_numpy(digits_cnn.split("test").X[:48])
    target = predicted_target(model, inputs)
    ig = adaptive_integrated_gradients(model, inputs, target).attributions
    ours = deletion_insertion(model, inputs, ig, target)
    rnd = deletion_insertion(model, inputs, random_attributions(inputs), target)
    assert ours.deletion_auc.mean() < rnd.deletion_auc.mean()
    assert ours.insertion_auc.mean() > rnd.insertion_auc.mean()


def test_curves_match_a_naive_loop(small_model):
    model, inputs = small_model("mlp")
    target = predicted_target(model, inputs)
    attr = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[0, 1, 2, 2, 2, 3]])
    curves = deletion_insertion(model, inputs, attr, target, baselines=0.5, feature_mask=mask)
    for i in range(len(inputs)):
        scores = [attr[i, mask[0] == f].sum() for f in range(4)]
        order = np.argsort(-np.array(scores), kind="stable")
        for step, k in enumerate(range(5)):
            gone = torch.isin(mask[0], torch.tensor(order[:k].copy()))
            x = torch.where(gone, torch.tensor(0.5), inputs[i])
            with torch.no_grad():
                p = model(x[None]).softmax(dim=1)[0, target[i]]
            np.testing.assert_allclose(curves.deletion[i, step], p.item(), rtol=1e-5)
    np.testing.assert_allclose(curves.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    expected = np.trapezoid(curves.deletion, curves.fractions, axis=1)
    np.testing.assert_allclose(curves.deletion_auc, expected)


def test_infidelity_equals_captum(small_model):
    model, inputs = small_model("mlp")
    target = predicted_target(model, inputs)
    attr = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(2))
    ours = attribution_infidelity(model, inputs, attr, target, seed=5)
    with seeded(5):
        theirs = infidelity(model, gaussian_perturbation(0.1), inputs, attr, target=target,
                            n_perturb_samples=10, normalize=True)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5)


def test_rank_methods_orders_by_insertion_minus_deletion():
    assert [m for m, _ in rank_methods({"a": (0.5, 0.6), "b": (0.1, 0.9), "c": (0.3, 0.3)})] \
        == ["b", "a", "c"]
