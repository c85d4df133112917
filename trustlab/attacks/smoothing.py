"""Randomised smoothing certification (Cohen, Rosenfeld & Kolter, 2019), our own batched version.

``g(x) = argmax_c P(f(x + N(0, σ²I)) = c)``. CERTIFY draws ``n0`` noisy copies to guess the top
class, ``n`` more to bound its probability below with a one-sided Clopper–Pearson bound p_A at
level ``alpha``, and certifies the L2 radius σ·Φ⁻¹(p_A) (abstaining when p_A ≤ ½). We implement it
rather than wrapping ART's ``RandomizedSmoothing`` estimator because ART's wraps a classifier for
*training* with noise and certifies one image at a time; ours samples many images' noise in one
batch and reuses :func:`trustlab.stats.clopper_pearson`, the interval every auditor uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from trustlab.errors import ConfigError
from trustlab.stats import clopper_pearson

ABSTAIN = -1


@dataclass
class Certificate:
    """Per-point smoothed prediction (``ABSTAIN`` = -1) and certified L2 radius (0 if abstained)."""

    prediction: np.ndarray
    radius: np.ndarray
    sigma: float

    def certified_accuracy(self, y: np.ndarray, radius: float) -> tuple[float, tuple[float, float]]:
        """Fraction of points predicted correctly with a certified radius ≥ ``radius``, with
        its Clopper–Pearson interval over the sample of points."""
        hits = int(((self.prediction == y) & (self.radius >= radius)).sum())
        return hits / len(y), clopper_pearson(hits, len(y))


def _class_counts(model: nn.Module, X: np.ndarray, sigma: float, samples: int, n_classes: int,
                  generator: torch.Generator, chunk: int) -> np.ndarray:
    """Votes of the base classifier over ``samples`` Gaussian copies of each point."""
    counts = np.zeros((len(X), n_classes), dtype=np.int64)
    x = torch.from_numpy(X)
    per_batch = max(1, chunk // samples)
    with torch.no_grad():
        for start in range(0, len(X), per_batch):
            part = x[start:start + per_batch]
            noisy = part.repeat_interleave(samples, 0)
            noisy = noisy + sigma * torch.randn(noisy.shape, generator=generator)
            votes = model(noisy).argmax(1).view(len(part), samples)
            counts[start:start + len(part)] = torch.nn.functional.one_hot(
                votes, n_classes).sum(1).numpy()
    return counts


def certify(model: nn.Module, X: np.ndarray, *, sigma: float, n_classes: int, n0: int = 100,
            n: int = 1000, alpha: float = 0.001, seed: int = 0, chunk: int = 8192) -> Certificate:
    """Cohen et al.'s CERTIFY for every row of ``X`` (see the module docstring)."""
    if sigma <= 0 or n0 < 1 or n < 1 or not 0 < alpha < 1:
        raise ConfigError(f"need sigma > 0, n0 >= 1, n >= 1 and 0 < alpha < 1; got sigma={sigma}, "
                          f"n0={n0}, n={n}, alpha={alpha}")
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    guess = _class_counts(model, X, sigma, n0, n_classes, generator, chunk).argmax(1)
    counts = _class_counts(model, X, sigma, n, n_classes, generator, chunk)
    top = counts[np.arange(len(X)), guess]
    p_lower = np.array([clopper_pearson(int(k), n, confidence=1 - 2 * alpha)[0] for k in top])
    certified = p_lower > 0.5
    radius = np.where(certified, sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
    return Certificate(np.where(certified, guess, ABSTAIN), radius, sigma)
