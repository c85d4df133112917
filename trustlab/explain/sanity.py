"""Sanity checks for attributions (Adebayo et al. 2018): do they depend on what the model learnt?

* model-parameter randomisation, cascading from the output layer to the input: attributions of
  the trained model should lose their rank correlation with those of a randomised one;
* data randomisation: attributions of a model trained on permuted labels should differ too;
* repeatability: two runs on the same model should agree (stochastic methods included).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from trustlab.explain.methods import seeded
from trustlab.train.data import DataBundle, Split
from trustlab.train.trainer import TrainSettings, fit

ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain(model, inputs, target) -> attributions`` shaped like inputs."""


def rank_correlation(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                     absolute: bool = True) -> np.ndarray:
    """Spearman correlation per example between two attribution batches (of |values| by default).

    A constant map has no ranking: its correlation is 0.
    """
    x, y = (np.asarray(t.detach() if isinstance(t, torch.Tensor) else t, dtype=float)
            .reshape(len(t), -1) for t in (a, b))
    if absolute:
        x, y = np.abs(x), np.abs(y)
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    norm = np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / norm
    return np.nan_to_num(rho, nan=0.0)


def cascade_layers(model: nn.Module) -> list[str]:
    """Modules that own parameters, from the output back to the input (the cascade order)."""
    owners = [name for name, module in model.named_modules()
              if any(True for _ in module.parameters(recurse=False))]
    return owners[::-1]


def randomise_layers(model: nn.Module, names: list[str], seed: int) -> nn.Module:
    """A copy of ``model`` with the parameters of ``names`` re-drawn from their initialisers."""
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            module = modules[name]
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                for param in module.parameters(recurse=False):
                    nn.init.normal_(param.data, std=float(param.data.std()) or 0.02)
    return clone.eval()


@dataclass
class CascadeResult:
    """Rank correlation with the trained model's attributions after each cascade stage."""

    layers: list[str]  # the deepest layer randomised at each stage (output side first)
    spearman: np.ndarray  # (stages, N)

    @property
    def mean(self) -> np.ndarray:
        return self.spearman.mean(axis=1)

    @property
    def fully_randomised(self) -> float:
        """Mean correlation once every layer is randomised (the paper's headline test)."""
        return float(self.mean[-1])


def parameter_randomisation(explain: ExplainFn, model: nn.Module, inputs: torch.Tensor,
                            target: torch.Tensor, *, max_stages: int | None = None,
                            seed: int = 0) -> CascadeResult:
    """Cascading model-parameter randomisation; ``max_stages`` evenly thins the stages (the last
    one, every layer randomised, is always kept)."""
    order = cascade_layers(model)
    cuts = np.arange(1, len(order) + 1)
    if max_stages is not None and max_stages < len(cuts):
        cuts = np.unique(np.linspace(1, len(order), max_stages).round().astype(int))
    reference = explain(model, inputs, target)
    rows = []
    for cut in cuts:
        randomised = randomise_layers(model, order[:cut], seed)
        rows.append(rank_correlation(reference, explain(randomised, inputs, target)))
    return CascadeResult([order[c - 1] for c in cuts], np.stack(rows))


def repeatability(explain: ExplainFn, model: nn.Module, inputs: torch.Tensor,
                  target: torch.Tensor, *, seed: int = 0) -> np.ndarray:
    """Per-example rank correlation between two runs with different random seeds."""
    runs = []
    for offset in (0, 1):
        with seeded(seed + offset):
            runs.append(explain(model, inputs, target))
    return rank_correlation(*runs)


def data_randomisation(explain: ExplainFn, model: nn.Module, data: DataBundle,
                       inputs: torch.Tensor, target: torch.Tensor, *, training: dict,
                       epochs: int = 5, seed: int = 0) -> np.ndarray:
    """Rank correlation with a same-architecture model trained on permuted labels.

    The permuted-label model memorises noise; ``training`` is the arch's training defaults. It
    selects weights on the (permuted) training split itself, as there is no signal to validate.
    """
    train = data.splits["train"]
    labels = np.random.default_rng(seed).permutation(train.y)
    noisy = Split(X=train.X, y=labels, sensitive=train.sensitive, rows=train.rows,
                  frame=train.frame)
    bundle = dataclasses.replace(data, splits={**data.splits, "train": noisy, "val": noisy})
    fresh = randomise_layers(model, cascade_layers(model), seed)
    settings = TrainSettings(epochs=epochs, seed=seed, device="cpu").resolved(training)
    noisy_model, _ = fit(fresh, bundle, "classification", settings, show_progress=False)
    return rank_correlation(explain(model, inputs, target), explain(noisy_model, inputs, target))
