"""From a trustlab model to what ART and our own attacks need: a ``PyTorchClassifier``, the
valid input box, and which input columns an attacker may change.

Images: every pixel is mutable within ``data.value_range``. Tabular data: only the *continuous*
features an applicant could plausibly change are mutable (not the sensitive attributes, not
``age``), each within the range observed on the training split; one-hot columns are never
perturbed, so every one-hot group stays one-hot. Tabular ε is therefore in standardised units
(one unit = one training standard deviation of that feature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trustlab.errors import ConfigError, TrustlabError
from trustlab.train.data import DataBundle

IMMUTABLE_TABULAR = ("age",)  # besides the sensitive attributes


@dataclass(frozen=True)
class InputDomain:
    """Per-feature lower/upper bounds (shaped like one input) and the mutable-feature mask."""

    lower: np.ndarray
    upper: np.ndarray
    mask: np.ndarray  # 1.0 where an attacker may change the feature, 0.0 elsewhere

    @property
    def span(self) -> float:
        """The widest mutable range: no L∞ ε above it is meaningful."""
        mutable = self.mask > 0
        return float((self.upper - self.lower)[mutable].max()) if mutable.any() else 0.0

    @property
    def n_mutable(self) -> int:
        return int((self.mask > 0).sum())


def input_domain(data: DataBundle, immutable: tuple[str, ...] | list[str] | None = None) -> InputDomain:
    """The valid input box and the mutable mask for ``data`` (see the module docstring)."""
    shape = tuple(data.input_shape)
    if data.modality == "image":
        low, high = data.value_range
        return InputDomain(np.full(shape, low, np.float32), np.full(shape, high, np.float32),
                           np.ones(shape, np.float32))
    frozen = set(IMMUTABLE_TABULAR if immutable is None else immutable) | set(data.features.sensitive)
    unknown = set(immutable or ()) - set(data.features.groups)
    if unknown:
        raise ConfigError(f"immutable feature(s) {sorted(unknown)} are not features of "
                          f"{data.name}; features: {sorted(data.features.groups)}")
    X = data.splits["train"].X
    mask = np.zeros(shape, np.float32)
    for name in data.features.numeric:
        if name not in frozen:
            mask[data.features.groups[name]] = 1.0
    if not mask.any():
        raise ConfigError(f"no mutable continuous feature left in {data.name}: every numeric "
                          "feature is sensitive or listed as immutable")
    return InputDomain(X.min(axis=0).astype(np.float32), X.max(axis=0).astype(np.float32), mask)


def require_classifier(task: str, attack: str) -> None:
    """Evasion attacks need class scores: refuse a regressor or an autoencoder by name."""
    if task != "classification":
        raise TrustlabError(f"{attack} attacks a classifier's decision, but this model is a "
                            f"{task} model; audit its anomaly score with a detector-evasion "
                            "attack instead, or pass a classifier")


def require_gradients(model: nn.Module, example: np.ndarray) -> None:
    """Raise if the model's output does not depend differentiably on its input."""
    x = torch.from_numpy(example[:1].copy()).requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise TrustlabError(f"{type(model).__name__} has no gradient with respect to its input "
                            "(its forward pass detaches or leaves torch): white-box attacks "
                            "cannot run; use the black-box attacks (square, hopskipjump)")


def art_classifier(model: nn.Module, data: DataBundle, *, domain: InputDomain | None = None):
    """ART ``PyTorchClassifier`` over a detached eval copy of ``model`` (logit outputs,
    cross-entropy loss, clip values from the input domain)."""
    from art.estimators.classification import PyTorchClassifier

    domain = domain or input_domain(data)
    with torch.no_grad():
        width = model.eval()(torch.from_numpy(domain.lower[None].copy())).shape[-1]
    if width != data.n_classes:
        raise TrustlabError(f"{type(model).__name__} outputs {width} values per input but "
                            f"{data.name} has {data.n_classes} classes: it is not a classifier "
                            "(an autoencoder or regressor?), and ART's evasion attacks such as "
                            "C&W need class logits")
    if data.modality == "image":
        clip = (float(domain.lower.min()), float(domain.upper.max()))
    else:
        clip = (domain.lower, np.maximum(domain.upper, domain.lower + 1e-6))  # ART wants lo < hi
    return PyTorchClassifier(model=model.eval(), loss=nn.CrossEntropyLoss(),
                             input_shape=tuple(data.input_shape), nb_classes=data.n_classes,
                             clip_values=clip, device_type="cpu")
