"""The audited thing: a model, its data splits, feature metadata and training facts."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trustlab.errors import ConfigError
from trustlab.train.checkpoint import load_checkpoint
from trustlab.train.data import DataBundle, Split, load_dataset
from trustlab.train.trainer import TrainedModel, predict


@dataclass
class Subject:
    """Model + data + facts. Members are ``data.splits['train']``, non-members ``['holdout']``.

    ``meta`` is the checkpoint's meta.json: arch, config, training settings and seed, metrics,
    and ``meta['privacy']`` (σ, q, steps, C, ε, δ, accountant) for a DP-trained model.
    """

    name: str
    model: nn.Module
    data: DataBundle
    meta: dict
    checkpoint: Path | None = None

    @classmethod
    def from_checkpoint(cls, directory: str | Path, *, name: str | None = None,
                        dataset_path: str | Path | None = None) -> "Subject":
        """Load a checkpoint and rebuild its data with the recorded seed and preprocessing."""
        model, meta = load_checkpoint(directory)
        spec = meta.get("data") or {}
        if "name" not in spec:
            raise ConfigError(f"{directory}/meta.json has no data.name: cannot rebuild its data")
        data = load_dataset(spec["name"], seed=spec.get("seed", 0), path=dataset_path,
                            preprocessing=spec.get("preprocessing") if spec.get("modality") ==
                            "tabular" else None)
        return cls(name=name or Path(directory).name, model=model, data=data, meta=meta,
                   checkpoint=Path(directory))

    @classmethod
    def from_trained(cls, trained: TrainedModel, name: str,
                     checkpoint: str | Path | None = None) -> "Subject":
        return cls(name=name, model=trained.model, data=trained.data, meta=trained.meta,
                   checkpoint=Path(checkpoint) if checkpoint else None)

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def task(self) -> str:
        return self.meta.get("task", "classification")

    @property
    def modality(self) -> str:
        return self.data.modality

    @property
    def privacy(self) -> dict | None:
        """DP training facts, or None for a non-private model."""
        return self.meta.get("privacy")

    @property
    def seed(self) -> int:
        return int(self.meta.get("training", {}).get("seed", self.data.seed))

    def split(self, name: str) -> Split:
        if name not in self.data.splits:
            raise ConfigError(f"unknown split {name!r}; available: {sorted(self.data.splits)}")
        return self.data.splits[name]

    def clean_model(self) -> nn.Module:
        """A detached copy in eval mode on the CPU: safe to attack or wrap without side effects."""
        return copy.deepcopy(self.model).cpu().eval()

    def logits(self, X: np.ndarray) -> np.ndarray:
        return predict(self.model, X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities for a classifier (softmax of its logits)."""
        if self.task != "classification":
            raise ConfigError(f"{self.name} is a {self.task} model: it has no class probabilities")
        return torch.from_numpy(self.logits(X)).softmax(dim=1).numpy()

    def describe(self) -> dict:
        """What a report records about its subject."""
        return {"name": self.name, "arch": self.arch, "task": self.task,
                "dataset": self.data.name, "modality": self.modality,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "config": self.meta.get("config"), "training": self.meta.get("training"),
                "metrics": self.meta.get("metrics"), "privacy": self.privacy,
                "sensitive_features": self.data.features.sensitive,
                "split_sizes": {k: len(v) for k, v in self.data.splits.items()}}
