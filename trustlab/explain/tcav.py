"""Concept-level explanations: Captum's TCAV with concepts built from the data, and its t-test.

A concept is a set of examples sharing a property: on digits, thick strokes (the top quartile of
ink) or the top half of a digit alone; on tabular data, membership of a sensitive group. Each
concept's TCAV score (the fraction of inputs whose target logit rises along the concept's
activation vector) is compared, over several random counterpart sets, with the scores of random
sets against each other (Kim et al. 2018); a two-sided t-test says whether it is significant.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from captum.concept import TCAV, Concept
from scipy.stats import ttest_ind
from torch import nn

from trustlab.errors import ConfigError
from trustlab.explain.methods import seeded
from trustlab.train.data import DataBundle


@dataclass
class ConceptScore:
    """TCAV scores of one concept against random sets, and the random-vs-random null scores."""

    concept: str
    layer: str
    scores: np.ndarray  # (R,) TCAV sign-count of the concept vs random set i
    null_scores: np.ndarray  # (R,) of random set 0 vs random set i
    p_value: float

    @property
    def mean(self) -> float:
        return float(self.scores.mean())

    def significant(self, alpha: float = 0.05) -> bool:
        return bool(self.p_value < alpha)


def default_layer(model: nn.Module) -> str:
    """A mid-depth layer whose output TCAV probes (the head's input would make TCAV degenerate:
    its gradient is the same for every input)."""
    names = dict(model.named_modules())
    if "encoder.blocks.0" in names:
        return "encoder.blocks.0"
    if isinstance(names.get("features"), nn.Sequential):
        return f"features.{len(names['features']) - 2}"
    if isinstance(model, nn.Sequential):
        first_relu = next((n for n, m in model.named_children() if isinstance(m, nn.ReLU)), None)
        if first_relu is not None:
            return first_relu
    raise ConfigError(f"no default TCAV layer for {type(model).__name__} (recurrent cells return "
                      "tuples TCAV cannot probe): pass layer='<module name>' of a tensor-output "
                      "module")


def data_concepts(data: DataBundle, *, size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Concept example sets built from ``data``'s training split.

    Images: ``thick_strokes`` (top quartile of ink), ``top_half`` (digits with the bottom half
    blanked). Tabular: ``<attribute>=<value>`` for every sensitive group with ≥ ``size`` rows.
    """
    rng = np.random.default_rng(seed)
    train = data.splits["train"]
    concepts: dict[str, np.ndarray] = {}
    if data.modality == "image":
        ink = train.X.reshape(len(train.X), -1).mean(axis=1)
        thick = np.flatnonzero(ink >= np.quantile(ink, 0.75))
        concepts["thick_strokes"] = train.X[rng.choice(thick, min(size, len(thick)), False)]
        top = train.X[rng.choice(len(train.X), size, False)].copy()
        top[:, :, top.shape[2] // 2:] = data.value_range[0]
        concepts["top_half"] = top
        return concepts
    for attribute in data.features.sensitive:
        values = train.sensitive[attribute].to_numpy()
        for value in np.unique(values):
            members = np.flatnonzero(values == value)
            if len(members) >= size:
                concepts[f"{attribute}={value}"] = train.X[rng.choice(members, size, False)]
    return concepts


def random_sets(data: DataBundle, count: int, *, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``count`` random example sets from the training split (the concepts' counterparts)."""
    rng = np.random.default_rng(seed + 1)
    X = data.splits["train"].X
    return [X[rng.choice(len(X), size, False)] for _ in range(count)]


def tcav_scores(model: nn.Module, inputs: torch.Tensor, target: int,
                concepts: dict[str, np.ndarray], randoms: list[np.ndarray], *,
                layer: str | None = None, seed: int = 0) -> list[ConceptScore]:
    """TCAV score of each concept for class ``target`` with its significance (two-sided t-test of
    concept-vs-random against random-vs-random scores, over ``len(randoms) − 1`` pairs)."""
    if len(randoms) < 3:
        raise ConfigError(f"the significance test needs at least 3 random sets, got {len(randoms)}")
    layer = layer or default_layer(model)
    made = [Concept(i, name, [torch.from_numpy(examples)]) for i, (name, examples) in
            enumerate(list(concepts.items()) + [(f"random_{j}", r) for j, r in enumerate(randoms)])]
    named, rand = made[:len(concepts)], made[len(concepts):]
    sets = [[c, r] for c in named for r in rand[1:]] + [[rand[0], r] for r in rand[1:]]
    with tempfile.TemporaryDirectory(prefix="trustlab-tcav-") as folder:
        tcav = TCAV(model, layers=[layer], save_path=folder + "/")
        with seeded(seed):
            raw = tcav.interpret(inputs, experimental_sets=sets, target=target)
    score = {key: float(value[layer]["sign_count"][0]) for key, value in raw.items()}

    def row(first: Concept) -> np.ndarray:
        return np.array([score[f"{first.id}-{r.id}"] for r in rand[1:]])

    null = row(rand[0])
    return [ConceptScore(c.name, layer, row(c), null, _p_value(row(c), null)) for c in named]


def _p_value(scores: np.ndarray, null: np.ndarray) -> float:
    if np.ptp(np.concatenate([scores, null])) == 0:
        return 1.0 if scores.mean() == null.mean() else 0.0
    return float(ttest_ind(scores, null).pvalue)
