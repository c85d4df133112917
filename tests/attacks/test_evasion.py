"""Evasion attacks: ours against ART on the same model and config, threat-model properties,
and the messages for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trustlab.attacks.art_adapter import art_classifier, input_domain, require_gradients
from trustlab.attacks.autoattack import apgd, autoattack
from trustlab.attacks.evasion import (carlini_wagner, evaluate_attack, fgsm, hopskipjump,
                                      make_threat, pgd)
from trustlab.errors import ConfigError, TrustlabError
from trustlab.train.data import load_dataset
from trustlab.train.zoo import InputSpec, build_model

N = 120


@pytest.fixture(scope="module")
def digits_sample(digits_cnn):
    test = digits_cnn.split("test")
    return digits_cnn.clean_model(), test.X[:N], test.y[:N], input_domain(digits_cnn.data)


@pytest.mark.parametrize("norm,eps", [("inf", 0.1), ("2", 0.8)])
def test_our_pgd_matches_art_pgd(digits_cnn, digits_sample, norm, eps):
    from art.attacks.evasion import ProjectedGradientDescent

    model, X, y, domain = digits_sample
    steps = 20
    ours = pgd(model, X, y, make_threat(domain, eps, norm), steps=steps, random_init=False)
    attack = ProjectedGradientDescent(art_classifier(digits_cnn.clean_model(), digits_cnn.data),
                                      norm=np.inf if norm == "inf" else 2, eps=eps,
                                      eps_step=2.5 * eps / steps, max_iter=steps,
                                      num_random_init=0, batch_size=N, verbose=False)
    theirs = attack.generate(X, y=y)
    ours_acc = evaluate_attack(model, X, y, ours).robust_accuracy
    art_acc = evaluate_attack(model, X, y, theirs).robust_accuracy
    assert abs(ours_acc - art_acc) <= 0.01 + 1e-9, (ours_acc, art_acc)
    assert ours_acc < evaluate_attack(model, X, y, X).robust_accuracy  # the attack did something


def test_pgd_restarts_keep_the_first_success_and_attack_only_standing_points(digits_sample):
    model, X, y, domain = digits_sample
    threat = make_threat(domain, 0.1)
    one = pgd(model, X, y, threat, steps=10, seed=3)
    three = pgd(model, X, y, threat, steps=10, restarts=3, seed=3)
    fooled_first = ~evaluate_attack(model, X, y, one).robust
    np.testing.assert_array_equal(three[fooled_first], one[fooled_first])
    robust_three = evaluate_attack(model, X, y, three).robust
    assert not (robust_three & fooled_first).any() and robust_three.sum() <= (~fooled_first).sum()
    assert np.abs(three - X).max() <= 0.1 + 1e-6


def test_fgsm_is_one_signed_step_of_size_eps(digits_sample):
    model, X, y, domain = digits_sample
    X_adv = fgsm(model, X, y, make_threat(domain, 0.1))
    moved = np.abs(X_adv - X)
    assert moved.max() <= 0.1 + 1e-6
    interior = (X > 0.1) & (X < 0.9)
    assert np.isclose(moved[interior], 0.1, atol=1e-6).mean() > 0.9


def test_hopskipjump_runs_on_images_within_the_ball(digits_cnn, digits_sample):
    """ART's HopSkipJump draws float64 starts; the float32 CNN must still take them."""
    model, X, y, domain = digits_sample
    X_adv = hopskipjump(model, X[:4], y[:4], digits_cnn.data, make_threat(domain, 0.1),
                        max_iter=2, max_eval=20, init_eval=5)
    assert X_adv.shape == X[:4].shape and np.abs(X_adv - X[:4]).max() <= 0.1 + 1e-5


def test_our_apgd_is_at_least_as_strong_as_art(digits_cnn, digits_sample):
    from art.attacks.evasion import AutoProjectedGradientDescent

    model, X, y, domain = digits_sample
    threat = make_threat(domain, 0.1)
    X, y = X[:60], y[:60]
    _, fooled = apgd(model, torch.from_numpy(X), torch.from_numpy(y), threat, n_iter=30,
                     generator=torch.Generator().manual_seed(0))
    ours = 1 - fooled.float().mean().item()
    np.random.seed(0)
    attack = AutoProjectedGradientDescent(art_classifier(digits_cnn.clean_model(), digits_cnn.data),
                                          norm=np.inf, eps=0.1, eps_step=0.2, max_iter=30,
                                          nb_random_init=1, batch_size=60, verbose=False)
    theirs = evaluate_attack(model, X, y, attack.generate(X, y=y)).robust_accuracy
    assert ours <= theirs + 0.02, (ours, theirs)


def test_autoattack_attacks_only_standing_points_and_beats_pgd(digits_sample, digits_cnn):
    model, X, y, domain = digits_sample
    threat = make_threat(domain, 0.1)
    result = autoattack(model, X, y, digits_cnn.data, threat, n_iter=20, square_queries=20)
    names = [s["name"] for s in result.stages]
    assert names == ["clean", "apgd-ce", "apgd-dlr", "square"]
    for before, after in zip(result.stages, result.stages[1:]):
        assert after["attacked"] == round(before["robust_accuracy"] * len(y))
        assert after["robust_accuracy"] <= before["robust_accuracy"]
    assert np.abs(result.x_adv - X).max() <= 0.1 + 1e-6
    scored = evaluate_attack(model, X, y, result.x_adv)
    assert scored.robust_accuracy == pytest.approx(result.robust_accuracy)
    pgd_acc = evaluate_attack(model, X, y, pgd(model, X, y, threat, steps=10)).robust_accuracy
    assert result.robust_accuracy <= pgd_acc + 0.01


def test_tabular_attacks_change_only_mutable_continuous_features(adult_mlp):
    data = adult_mlp.data
    domain = input_domain(data)
    test = adult_mlp.split("test")
    X, y = test.X[:200], test.y[:200]
    X_adv = pgd(adult_mlp.clean_model(), X, y, make_threat(domain, 1.0), steps=10)
    changed = np.flatnonzero(np.abs(X_adv - X).max(axis=0) > 0)
    mutable = [data.features.groups[f][0] for f in data.features.numeric
               if f not in ("age", *data.features.sensitive)]
    assert set(changed) <= set(mutable) and changed.size
    assert (X_adv >= domain.lower - 1e-6).all() and (X_adv <= domain.upper + 1e-6).all()
    for name in data.features.categorical:  # one-hot groups stay one-hot
        columns = data.features.groups[name]
        assert np.allclose(X_adv[:, columns].sum(1), X[:, columns].sum(1))


@pytest.mark.parametrize("eps,norm", [(1.5, "inf"), (0.0, "inf"), (-0.1, "2"), (9.0, "2")])
def test_eps_outside_data_range_is_refused(digits_sample, eps, norm):
    *_, domain = digits_sample
    with pytest.raises(ConfigError, match="outside the data range"):
        make_threat(domain, eps, norm)


def test_cw_on_an_autoencoder_is_refused_by_name():
    data = load_dataset("german")
    spec = InputSpec(shape=list(data.input_shape), n_classes=data.n_classes)
    autoencoder = build_model("autoencoder", spec)
    test = data.splits["test"]
    with pytest.raises(TrustlabError, match="not a classifier"):
        carlini_wagner(autoencoder, test.X[:4], test.y[:4], data, input_domain(data))


class _NoGradients(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.detach()).detach()


def test_model_without_gradients_is_refused(digits_sample):
    model, X, *_ = digits_sample
    with pytest.raises(TrustlabError, match="no gradient"):
        require_gradients(_NoGradients(model), X)
    require_gradients(model, X)
