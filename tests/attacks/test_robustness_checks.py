"""Gradient-masking checklist and randomised-smoothing certificates against analytic values."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from trustlab.attacks.masking import gradient_masking_checks
from trustlab.attacks.smoothing import ABSTAIN, certify
from trustlab.stats import clopper_pearson


def _by_name(checks):
    return {c.name: c.passed for c in checks}


def test_checks_pass_on_a_healthy_evaluation():
    checks = gradient_masking_checks({0.05: 0.8, 0.1: 0.5, 0.3: 0.0}, large_eps_accuracy=0.0,
                                     blackbox_accuracy=0.6, whitebox_accuracy=0.5,
                                     fgsm_accuracy=0.7, more_steps_accuracy=0.49)
    assert all(_by_name(checks).values()) and len(checks) == 5


def test_each_symptom_fires():
    checks = _by_name(gradient_masking_checks(
        {0.05: 0.5, 0.1: 0.7, 0.3: 0.9}, large_eps_accuracy=0.6, blackbox_accuracy=0.2,
        whitebox_accuracy=0.7, fgsm_accuracy=0.4, more_steps_accuracy=0.9))
    assert not any(checks.values()), checks


class _Constant(nn.Module):
    """Always predicts class 1 (of 3): every noisy vote agrees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 5.0, 0.0]).expand(len(x), 3) + 0 * x.flatten(1)[:, :1]


class _Threshold(nn.Module):
    """Class 1 iff x[0] > 0: the smoothed vote for x is Φ(x0/σ), so the radius is known."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)


def test_certified_radius_of_a_constant_classifier_is_the_clopper_pearson_bound():
    X = np.zeros((5, 4), dtype=np.float32)
    cert = certify(_Constant(), X, sigma=0.5, n_classes=3, n0=10, n=200, alpha=0.001)
    expected = 0.5 * norm.ppf(clopper_pearson(200, 200, confidence=0.998)[0])
    assert (cert.prediction == 1).all()
    assert np.allclose(cert.radius, expected)
    accuracy, (low, high) = cert.certified_accuracy(np.ones(5, int), expected - 1e-6)
    assert accuracy == 1.0 and low < 1.0 == high


def test_certified_radius_of_a_halfspace_is_below_its_true_distance():
    X = np.array([[0.0], [0.3], [1.0], [-1.0]], dtype=np.float32)
    cert = certify(_Threshold(), X, sigma=0.5, n_classes=2, n=4000, alpha=0.001, seed=1)
    assert cert.prediction[0] == ABSTAIN  # on the boundary: p_A ≈ ½
    assert cert.prediction[2] == 1 and cert.prediction[3] == 0
    assert 0.6 < cert.radius[2] <= 1.0 and 0.6 < cert.radius[3] <= 1.0  # true distance is 1
