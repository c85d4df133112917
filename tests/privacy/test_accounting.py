"""ε equals opacus's accountants for the same (σ, q, steps, δ)."""

from __future__ import annotations

import warnings

import pytest
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

from trustlab.errors import ConfigError
from trustlab.privacy import calibrate_noise, compute_epsilon


@pytest.mark.parametrize("accountant, cls", [("rdp", RDPAccountant), ("prv", PRVAccountant),
                                             ("gdp", GaussianAccountant)])
def test_epsilon_equals_opacus(accountant, cls):
    reference = cls()
    for _ in range(300):
        reference.step(noise_multiplier=1.1, sample_rate=0.01)
    want = reference.get_epsilon(delta=1e-5)
    assert compute_epsilon(1.1, 0.01, 300, 1e-5, accountant) == pytest.approx(want, abs=1e-6)


def test_unknown_accountant_and_bad_delta():
    with pytest.raises(ConfigError, match="unknown accountant"):
        compute_epsilon(1.0, 0.01, 10, 1e-5, "moments")
    with pytest.raises(ConfigError, match="target_delta"):
        calibrate_noise(1.0, 2.0, 0.01, 10)


def test_calibration_does_not_warn_about_its_own_probes():
    """opacus warns "Optimal order is the largest alpha" for the search's large-σ probes; the
    σ found (ε ≤ target, optimum inside the grid) must come without that warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sigma = calibrate_noise(2.0, 1e-5, 64 / 1437, 17)
    assert not [w for w in caught if "Optimal order" in str(w.message)]
    reference = RDPAccountant()
    reference.history = [(sigma, 64 / 1437, 17)]
    eps, best_alpha = reference.get_privacy_spent(delta=1e-5)
    assert eps <= 2.0 and best_alpha < max(RDPAccountant.DEFAULT_ALPHAS)
