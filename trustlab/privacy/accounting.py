"""Privacy accounting through opacus's accountants: ε at δ, and σ calibrated from a target ε."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from trustlab.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv", "gdp")


@dataclass
class PrivacyFacts:
    """What a DP training run spent; recorded in the checkpoint meta for the audits."""

    noise_multiplier: float  # σ
    sample_rate: float  # q
    steps: int
    max_grad_norm: float  # C (per-layer clipping: the norm of the layers' bounds)
    epsilon: float
    delta: float
    accountant: str
    secure_mode: bool = False  # noise and sampling from a CSPRNG (see trustlab.privacy.secure)
    clipping: str = "flat"  # per_layer, automatic; adaptive: max_grad_norm is where it ended

    def to_dict(self) -> dict:
        return asdict(self)


def make_accountant(name: str) -> IAccountant:
    if name not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return create_accountant(mechanism=name)


def compute_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "rdp") -> float:
    """ε at ``delta`` after ``steps`` Poisson-sampled Gaussian steps (σ, q)."""
    if steps == 0:
        return 0.0
    acc = make_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str = "rdp") -> float:
    """The smallest σ (to opacus's tolerance) whose ε after ``steps`` is ≤ ``target_epsilon``."""
    if target_epsilon <= 0:
        raise ConfigError(f"target_epsilon must be > 0, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ConfigError(f"target_delta must be in (0, 1), got {delta}")
    try:
        with warnings.catch_warnings():
            # the search's first probes (σ of 20, 10, 5...) have their optimal RDP order at
            # the grid's top, and opacus warns for each; the σ returned is checked the same way
            # when its ε is reported
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps,
                                              accountant=make_accountant(accountant).mechanism()))
    except ValueError as err:
        raise ConfigError(
            f"target ε={target_epsilon} at δ={delta} is unreachable for {steps} steps at "
            f"sample rate {sample_rate:.4g} ({err}); raise target_epsilon or delta, or train for "
            f"fewer epochs / with a smaller batch") from err
