"""ε equals opacus's accountants for the same (σ, q, steps, δ)."""

from __future__ import annotations

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
