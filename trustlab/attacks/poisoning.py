"""Backdoor poisoning audit: plant a trigger with ART's ``PoisoningAttackBackdoor`` in a copy of
an image training set, train the same architecture on it, measure clean accuracy and attack
success rate, and run ART's ``ActivationDefence`` (activation clustering, Chen et al. 2018) on the
penultimate-layer features to see whether it finds the poisoned samples."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from torch import nn

from trustlab.attacks.art_adapter import art_classifier
from trustlab.errors import ConfigError
from trustlab.train.data import DataBundle, Split
from trustlab.train.trainer import TrainSettings, predict, train


def add_trigger(X: np.ndarray) -> np.ndarray:
    """Stamp ART's corner pattern (pixel value = the data maximum) on (N, C, H, W) images."""
    from art.attacks.poisoning.perturbations import add_pattern_bd

    return np.stack([add_pattern_bd(X[:, c], pixel_value=1) for c in range(X.shape[1])],
                    axis=1).astype(np.float32)


def poison(data: DataBundle, *, target: int = 0, fraction: float = 0.1,
           seed: int = 0) -> tuple[DataBundle, np.ndarray]:
    """A copy of ``data`` whose train split has ``fraction`` of its non-target images stamped
    with the trigger and relabelled ``target``; returns it and the poisoned row positions."""
    from art.attacks.poisoning import PoisoningAttackBackdoor

    if data.modality != "image":
        raise ConfigError(f"the backdoor audit stamps an image trigger; {data.name} is "
                          f"{data.modality} data")
    if not 0 < fraction < 1 or not 0 <= target < data.n_classes:
        raise ConfigError(f"need 0 < fraction < 1 and 0 <= target < {data.n_classes}; got "
                          f"fraction={fraction}, target={target}")
    train_split = data.splits["train"]
    candidates = np.flatnonzero(train_split.y != target)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=max(1, int(fraction * len(candidates))),
                                replace=False))
    attack = PoisoningAttackBackdoor(add_trigger)
    stamped, _ = attack.poison(train_split.X[chosen], y=np.full(len(chosen), target))
    X, y = train_split.X.copy(), train_split.y.copy()
    X[chosen], y[chosen] = stamped, target
    poisoned = copy.copy(data)
    poisoned.splits = {**data.splits, "train": Split(X=X, y=y, sensitive=train_split.sensitive,
                                                     rows=train_split.rows)}
    return poisoned, chosen


class PenultimateFeatures(nn.Module):
    """Outputs the input of ``model``'s last ``nn.Linear``: the representation activation
    clustering needs (ART would read a non-Sequential model's logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(model).__name__} has no nn.Linear head to read features from")
        self.model, self._features = model, None
        linears[-1].register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple) -> None:
        self._features = inputs[0]

    def forward(self, x):
        self.model(x)
        return self._features


@dataclass
class BackdoorAudit:
    clean_accuracy: float
    attack_success_rate: float
    detector_precision: float
    detector_recall: float
    n_poisoned: int
    n_train: int
    model: nn.Module


def backdoor_audit(arch: str, data: DataBundle, *, target: int = 0, fraction: float = 0.1,
                   epochs: int = 10, seed: int = 0, show_progress: bool = False) -> BackdoorAudit:
    """Poison, train ``arch``, score the backdoor on the test split, run activation clustering."""
    from art.defences.detector.poison import ActivationDefence

    poisoned, chosen = poison(data, target=target, fraction=fraction, seed=seed)
    trained = train(arch, data.name, data=poisoned, show_progress=show_progress,
                    settings=TrainSettings(epochs=epochs, seed=seed))
    model = trained.model.eval()
    test = data.splits["test"]
    clean_accuracy = float((predict(model, test.X).argmax(1) == test.y).mean())
    others = test.y != target
    triggered = predict(model, add_trigger(test.X[others])).argmax(1)
    asr = float((triggered == target).mean())
    train_split = poisoned.splits["train"]
    features = predict(PenultimateFeatures(copy.deepcopy(model)), train_split.X)

    class PenultimateActivationDefence(ActivationDefence):
        def _get_activations(self, x_train: np.ndarray | None = None) -> np.ndarray:
            return features  # ART would read the logits of a non-Sequential model

    defence = PenultimateActivationDefence(art_classifier(model, data), train_split.X,
                                           np.eye(data.n_classes, dtype=np.float32)[train_split.y])
    _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    flagged = np.asarray(is_clean) == 0
    truth = np.zeros(len(train_split.y), dtype=bool)
    truth[chosen] = True
    hits = int((flagged & truth).sum())
    precision = hits / flagged.sum() if flagged.any() else float("nan")
    return BackdoorAudit(clean_accuracy, asr, float(precision), hits / len(chosen), len(chosen),
                         len(truth), model)
