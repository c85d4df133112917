"""Adaptive clipping (Andrew et al. 2021): the clipping bound follows a quantile of the
per-sample gradient norms instead of being tuned by hand.

After each step the bound moves geometrically, ``C <- C · exp(-η (b̃ - γ))``, where ``b̃`` is
the privatised fraction of samples that were not clipped. The count is released centred,
``Σ_i (b_i - 1/2) + N(0, σ_b²)`` (sensitivity 1/2 under adding or removing a sample), and
divided by the *expected* batch size (the realised one is private under Poisson sampling). The
step then releases two Gaussian queries; it is as private as one with noise multiplier
``σ = (σ_Δ⁻² + (2σ_b)⁻²)^(-1/2)`` (as Andrew et al. show), so the gradient gets ``σ_Δ`` and
the accountant is told ``σ``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trustlab.errors import ConfigError


@dataclass(frozen=True)
class AdaptiveClipping:
    """The bound's update rule: target unclipped fraction ``target_quantile`` (γ), geometric
    rate ``learning_rate`` (η), and the count's noise ``count_std`` (σ_b, in samples)."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_std: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1:
            raise ConfigError(f"target_unclipped_quantile must be in (0, 1), got "
                              f"{self.target_quantile}")
        if self.learning_rate < 0 or self.count_std <= 0:
            raise ConfigError(f"clipbound_learning_rate must be >= 0 and unclipped_num_std > 0, "
                              f"got {self.learning_rate} and {self.count_std}")

    def gradient_noise_multiplier(self, noise_multiplier: float) -> float:
        """``σ_Δ`` such that gradient and count together are as private as ``σ`` alone."""
        if noise_multiplier == 0:
            return 0.0
        left = noise_multiplier ** -2 - (2 * self.count_std) ** -2
        if left <= 0:
            raise ConfigError(
                f"adaptive clipping needs unclipped_num_std > noise_multiplier / 2 (got "
                f"{self.count_std:.4g} for σ = {noise_multiplier:.4g}): the count would spend "
                "the whole budget. Raise unclipped_num_std (Andrew et al. use expected batch "
                "size / 20)")
        return left ** -0.5

    def next_bound(self, bound: float, unclipped: float, samples: float, noise: float,
                   expected_batch_size: float) -> float:
        """The bound after a step whose batch had ``unclipped`` of ``samples`` samples under
        ``bound``, with ``noise`` ~ N(0, σ_b²) added to the centred count."""
        fraction = (unclipped - samples / 2 + noise) / expected_batch_size + 0.5
        return bound * math.exp(-self.learning_rate * (fraction - self.target_quantile))
