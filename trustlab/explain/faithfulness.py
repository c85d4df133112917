"""Faithfulness: does removing what an attribution ranks first change the prediction first?

Deletion replaces the highest-ranked features by the baseline step by step (a faithful ranking
makes the target probability fall fast: low AUC); insertion reveals them on the baseline (fast
rise: high AUC). Features are pixels, or original features for tabular data (a ``feature_mask``
keeps one-hot columns together). Captum's ``infidelity`` and ``sensitivity_max`` are wrapped with
our defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from trustlab.errors import ConfigError
from trustlab.explain.methods import seeded


@dataclass
class Curves:
    """Target-class probability as a fraction of features is deleted / inserted."""

    fractions: np.ndarray  # (S + 1,)
    deletion: np.ndarray  # (N, S + 1)
    insertion: np.ndarray  # (N, S + 1)

    @property
    def deletion_auc(self) -> np.ndarray:
        return _auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:
        return _auc(self.fractions, self.insertion)


def _auc(fractions: np.ndarray, curve: np.ndarray) -> np.ndarray:
    widths = np.diff(fractions)
    return ((curve[:, 1:] + curve[:, :-1]) / 2 * widths).sum(axis=1)


def _feature_scores(attributions: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                                     torch.Tensor]:
    """Per-example scores of each feature and the feature id of every input entry (flat)."""
    flat = attributions.reshape(len(attributions), -1).double()
    if mask is None:
        return flat, torch.arange(flat.shape[1])
    ids = mask.reshape(-1).long()
    if ids.numel() != flat.shape[1]:
        raise ConfigError(f"feature_mask has {ids.numel()} entries per input, the inputs "
                          f"{flat.shape[1]}")
    scores = torch.zeros(len(flat), int(ids.max()) + 1, dtype=flat.dtype)
    return scores.index_add_(1, ids, flat), ids


@torch.no_grad()
def deletion_insertion(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
                       target: torch.Tensor, *, baselines: torch.Tensor | float = 0.0,
                       feature_mask: torch.Tensor | None = None, steps: int = 16,
                       batch_size: int = 1024) -> Curves:
    """Deletion and insertion curves of the target probability, ranking features by attribution
    (most positive first). ``steps`` evenly spaced fractions from 0 to 1 (capped at the count)."""
    if attributions.shape != inputs.shape:
        raise ConfigError(f"attributions shape {tuple(attributions.shape)} differs from inputs "
                          f"{tuple(inputs.shape)}")
    scores, ids = _feature_scores(attributions, feature_mask)
    n, n_features = scores.shape
    counts = np.unique(np.linspace(0, n_features, min(steps, n_features) + 1).round().astype(int))
    order = scores.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_features).expand(n, -1))
    entry_rank = rank[:, ids]  # (N, D): rank of the feature each input entry belongs to
    flat_x = inputs.reshape(n, -1)
    flat_b = torch.as_tensor(baselines, dtype=inputs.dtype).expand_as(inputs).reshape(n, -1)
    shown = torch.stack([entry_rank < k for k in counts], dim=1)  # (N, S+1, D): top-k revealed
    deleted = torch.where(shown, flat_b[:, None], flat_x[:, None])
    inserted = torch.where(shown, flat_x[:, None], flat_b[:, None])
    batch = torch.cat([deleted, inserted]).reshape(-1, *inputs.shape[1:])
    probs = torch.cat([model(batch[i:i + batch_size]).softmax(dim=1)
                       for i in range(0, len(batch), batch_size)])
    targets = target.repeat(2).repeat_interleave(len(counts))
    picked = probs[torch.arange(len(probs)), targets].reshape(2, n, len(counts)).numpy()
    return Curves(counts / n_features, picked[0], picked[1])


def random_attributions(inputs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random ranking: the baseline every attribution method must beat."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype)


def gaussian_perturbation(scale: float) -> Callable:
    """Captum ``perturb_func`` for infidelity: Gaussian noise of std ``scale``."""

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(inputs) * scale
        return noise, inputs - noise

    return perturb


def attribution_infidelity(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
                           target: torch.Tensor, *, scale: float = 0.1,
                           n_perturb_samples: int = 10, seed: int = 0) -> np.ndarray:
    """Captum's ``infidelity`` (normalised, so methods of different scale compare), per example."""
    with seeded(seed):
        values = infidelity(model, gaussian_perturbation(scale), inputs, attributions,
                            target=target, n_perturb_samples=n_perturb_samples, normalize=True)
    return values.detach().numpy()


def attribution_sensitivity(explain: Callable[..., torch.Tensor], inputs: torch.Tensor,
                            target: torch.Tensor, *, radius: float = 0.02,
                            n_perturb_samples: int = 5, seed: int = 0) -> np.ndarray:
    """Captum's ``sensitivity_max``: the largest change of the explanation within ``radius``."""
    with seeded(seed):
        # Captum tuplizes the perturbed explanations but not the unperturbed one: give tuples
        values = sensitivity_max(lambda x, **kw: (explain(x[0] if isinstance(x, tuple) else x,
                                                          **kw),),
                                 inputs, target=target, perturb_radius=radius,
                                 n_perturb_samples=n_perturb_samples)
    return values.detach().numpy()


def rank_methods(aucs: dict[str, tuple[float, float]]) -> list[tuple[str, float]]:
    """Methods by faithfulness score = insertion AUC − deletion AUC (higher is better)."""
    return sorted(((m, ins - dele) for m, (dele, ins) in aucs.items()), key=lambda t: -t[1])
