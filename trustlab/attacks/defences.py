"""Defences to audit: PGD adversarial training (Madry et al.), defensive distillation
(Papernot et al.), and an adversarial-input detector (ART's ``BinaryInputDetector``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustlab.attacks.art_adapter import input_domain
from trustlab.attacks.evasion import make_threat, pgd_tensor
from trustlab.errors import ConfigError
from trustlab.train.data import DataBundle
from trustlab.train.trainer import Perturb, input_spec_for, predict, seed_everything
from trustlab.train.zoo import InputSpec, build_model


def adversarial_training(data: DataBundle, *, eps: float = 0.1, steps: int = 7,
                         norm: str = "inf", seed: int = 0) -> Perturb:
    """A ``perturb`` hook for :func:`trustlab.train.trainer.train`: every training batch is
    replaced by its PGD adversarial examples (``steps`` steps of 2.5·ε/steps, random start),
    within the data's valid range and mutable features."""
    if steps < 1:
        raise ConfigError(f"adversarial training needs steps >= 1, got {steps}")
    threat = make_threat(input_domain(data), eps, norm)
    generator = torch.Generator().manual_seed(seed)

    def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model.eval()  # attack the deterministic model (no dropout); the trainer restores train()
        return pgd_tensor(model, x, y, threat, steps=steps, step_size=2.5 * eps / steps,
                          random_init=True, generator=generator)

    return perturb


def defensive_distillation(teacher: nn.Module, arch: str, data: DataBundle, *,
                           temperature: float = 50.0, epochs: int = 10, lr: float = 2e-3,
                           batch_size: int = 64, config: dict | None = None,
                           seed: int = 0) -> nn.Module:
    """Train a fresh ``arch`` on the teacher's soft labels at ``temperature`` and deploy it at
    temperature 1: its logits are ~``temperature``× larger, so its softmax saturates and the
    cross-entropy gradient vanishes — robustness that is mostly gradient masking."""
    if temperature <= 0 or epochs < 1:
        raise ConfigError(f"need temperature > 0 and epochs >= 1, got {temperature}, {epochs}")
    seed_everything(seed)
    X = data.splits["train"].X
    soft = torch.softmax(torch.from_numpy(predict(teacher, X)) / temperature, dim=1)
    student = build_model(arch, input_spec_for(data), config)
    loader = DataLoader(TensorDataset(torch.from_numpy(X), soft), batch_size=batch_size,
                        shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    for _ in range(epochs):
        for xb, pb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = -(pb * torch.log_softmax(student(xb) / temperature, dim=1)).sum(1).mean()
            loss.backward()
            optimizer.step()
    return student.eval()


def adversarial_detector(data: DataBundle, X_clean: np.ndarray, X_adv: np.ndarray, *,
                         epochs: int = 20, seed: int = 0):
    """ART's ``BinaryInputDetector`` on a small zoo network (CNN for images, MLP for tables),
    trained to tell ``X_clean`` (label 0) from ``X_adv`` (label 1)."""
    from art.defences.detector.evasion import BinaryInputDetector
    from art.estimators.classification import PyTorchClassifier

    seed_everything(seed)
    spec = InputSpec(shape=list(data.input_shape), n_classes=2)
    if data.modality == "image":
        network = build_model("cnn", spec, {"widths": [16, 32], "groups": 4})
    else:
        network = build_model("mlp", spec, {"hidden": [64, 64], "dropout": 0.0})
    classifier = PyTorchClassifier(network, loss=nn.CrossEntropyLoss(),
                                   optimizer=torch.optim.AdamW(network.parameters(), lr=2e-3),
                                   input_shape=tuple(data.input_shape), nb_classes=2,
                                   device_type="cpu")
    detector = BinaryInputDetector(classifier)
    x = np.concatenate([X_clean, X_adv]).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)[np.r_[np.zeros(len(X_clean), int), np.ones(len(X_adv), int)]]
    detector.fit(x, labels, nb_epochs=epochs, batch_size=64)
    return detector


def detection_rates(detector, X_clean: np.ndarray, X_adv: np.ndarray) -> tuple[float, float]:
    """(share of adversarial inputs flagged, share of clean inputs flagged)."""
    _, flagged_adv = detector.detect(X_adv.astype(np.float32))
    _, flagged_clean = detector.detect(X_clean.astype(np.float32))
    return float(np.mean(flagged_adv)), float(np.mean(flagged_clean))
