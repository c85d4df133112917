"""The training loop: AdamW/SGD, cosine schedule, early stopping on ``val``, seeded, with progress.

``fit`` is generic; two hooks let the layers above change it without copying it:
``wrap(model, optimizer, loader)`` returns replacements (the DP engine's ``make_private``) and
``objective(model, x, y)`` returns a batch's training loss in place of the task loss
(adversarial training).
"""

from __future__ import annotations

import copy
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustlab.errors import ConfigError
from trustlab.train.checkpoint import check_writable, save_checkpoint
from trustlab.train.data import DataBundle, Split, dataset_modality, load_dataset
from trustlab.train.progress import progress_bar
from trustlab.train.zoo import InputSpec, arch_info, build_model, full_config

Wrap = Callable[[nn.Module, torch.optim.Optimizer, DataLoader],
                tuple[nn.Module, torch.optim.Optimizer, DataLoader]]
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainSettings:
    """Optimisation settings; ``None`` fields take the architecture's defaults."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    optimizer: str = "adamw"
    patience: int | None = None
    early_stopping: bool = True  # False: every epoch runs and the last weights are kept
    seed: int = 0
    device: str = "auto"

    def resolved(self, defaults: dict) -> "TrainSettings":
        """These settings with ``defaults`` filled in, validated before any data is loaded."""
        values = {k: v if v is not None else defaults.get(k) for k, v in vars(self).items()}
        if values["optimizer"] not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {values['optimizer']!r}")
        for name in ("epochs", "batch_size", "patience"):
            if values[name] < 1:
                raise ConfigError(f"{name} must be >= 1, got {values[name]}")
        if not values["lr"] > 0:
            raise ConfigError(f"lr (the learning rate) must be > 0, got {values['lr']}")
        if not values["weight_decay"] >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {values['weight_decay']}")
        resolve_device(values["device"])
        return TrainSettings(**values)


@dataclass
class TrainedModel:
    """A trained model with its data, metrics and the meta.json its checkpoint records."""

    model: nn.Module
    data: DataBundle
    meta: dict
    history: list[dict] = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        return self.meta["metrics"]


def resolve_device(device: str) -> torch.device:
    """The torch device for ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``; a CUDA device this machine does not have is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda") from exc
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: CUDA is not available here (this torch sees "
                          f"{torch.cuda.device_count()} CUDA device(s)): use device cpu or auto")
    return resolved


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_rows(split: Split, task: str) -> np.ndarray:
    """Rows a model trains on: all of them, or the negative class for an anomaly autoencoder."""
    return np.flatnonzero(split.y == 0) if task == "reconstruction" else np.arange(len(split))


def make_loader(split: Split, task: str, batch_size: int, seed: int) -> DataLoader:
    rows = training_rows(split, task)
    tensors = TensorDataset(torch.from_numpy(split.X[rows]), torch.from_numpy(split.y[rows]))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(tensors, batch_size=batch_size, shuffle=True, generator=generator)


def loss_function(task: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(output, x, y)``: cross-entropy for classifiers, MSE for autoencoders."""
    if task == "reconstruction":
        return lambda out, x, y: nn.functional.mse_loss(out, x)
    return lambda out, x, y: nn.functional.cross_entropy(out, y)


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray, *, batch_size: int = 2048,
            device: torch.device | str = "cpu") -> np.ndarray:
    """Model outputs (logits or reconstructions) for ``X``, batched, in eval mode."""
    model.eval()
    outputs = [model(torch.from_numpy(X[i:i + batch_size]).to(device)).float().cpu()
               for i in range(0, len(X), batch_size)]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0,), dtype=np.float32)


def evaluate(model: nn.Module, split: Split, task: str, device: torch.device | str = "cpu") -> dict:
    """Accuracy (classifier) or reconstruction error and anomaly AUROC (autoencoder)."""
    out = predict(model, split.X, device=device)
    if task == "reconstruction":
        errors = ((out - split.X) ** 2).mean(axis=1)
        return {"loss": float(errors[split.y == 0].mean()),
                "anomaly_auroc": float(roc_auc_score(split.y, errors))}
    loss = nn.functional.cross_entropy(torch.from_numpy(out), torch.from_numpy(split.y))
    return {"loss": float(loss), "accuracy": float((out.argmax(axis=1) == split.y).mean())}


def fit(model: nn.Module, data: DataBundle, task: str, settings: TrainSettings, *,
        wrap: Wrap | None = None, objective: Objective | None = None,
        show_progress: bool = True) -> tuple[nn.Module, list[dict]]:
    """Train ``model`` on ``data.splits['train']``; keep the weights with the lowest ``val`` loss
    (the last weights with ``settings.early_stopping=False``)."""
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=0.9,
                                    weight_decay=settings.weight_decay)
    loader = make_loader(data.splits["train"], task, settings.batch_size, settings.seed)
    if wrap is not None:
        model, optimizer, loader = wrap(model, optimizer, loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    loss_fn = loss_function(task)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    best_loss, best_state, since_best, history = np.inf, None, 0, []
    with progress_bar(f"training {type(model).__name__}", settings.epochs, show_progress) as bar:
        for epoch in range(settings.epochs):
            model.train()
            total, count = 0.0, 0
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad(set_to_none=True)
                if len(xb) == 0:  # Poisson sampling can draw an empty batch: the step still counts
                    optimizer.step()
                    continue
                with autocast:
                    loss = (objective(model, xb, yb) if objective is not None
                            else loss_fn(model(xb), xb, yb))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch}: "
                                             "lower the learning rate")
                loss.backward()
                optimizer.step()
                total, count = total + float(loss.detach()) * len(xb), count + len(xb)
            scheduler.step()
            val = evaluate(model, data.splits["val"], task, device)
            history.append({"epoch": epoch + 1, "train_loss": total / max(count, 1), **val})
            bar.advance(f"loss {total / max(count, 1):.4f} val loss {val['loss']:.4f}")
            if not settings.early_stopping:
                continue
            if val["loss"] < best_loss:
                best_loss, since_best = val["loss"], 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if since_best >= settings.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history


def versions() -> dict:
    import sklearn

    return {"trustlab": __import__("trustlab").__version__, "torch": torch.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version()}


def hardware(device: torch.device) -> dict:
    info = {"device": device.type, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def input_spec_for(data: DataBundle) -> InputSpec:
    groups = list(data.features.groups.values()) if data.modality == "tabular" else []
    return InputSpec(shape=list(data.input_shape), n_classes=data.n_classes,
                     feature_groups=groups)


def train(arch: str, dataset: str, *, settings: TrainSettings | None = None,
          config: dict | None = None, out: str | Path | None = None,
          dataset_path: str | Path | None = None, data: DataBundle | None = None,
          wrap: Wrap | None = None, objective: Objective | None = None,
          extra_meta: dict | None = None, show_progress: bool = True) -> TrainedModel:
    """Train zoo architecture ``arch`` on ``dataset``; write a checkpoint to ``out`` if given."""
    info = arch_info(arch)
    if dataset_modality(dataset) != info.modality:
        raise ConfigError(f"arch {arch!r} takes {info.modality} data but dataset {dataset!r} is "
                          f"{dataset_modality(dataset)}")
    settings = (settings or TrainSettings()).resolved(info.training)
    data = data or load_dataset(dataset, seed=settings.seed, path=dataset_path)
    if out is not None:
        check_writable(out)
    seed_everything(settings.seed)
    spec = input_spec_for(data)
    model = build_model(arch, spec, config)
    started = time.perf_counter()
    model, history = fit(model, data, info.task, settings, wrap=wrap, objective=objective,
                         show_progress=show_progress)
    wall = time.perf_counter() - started
    device = next(model.parameters()).device
    metrics = {f"{split}_{name}": value for split in ("train", "val", "holdout", "test")
               for name, value in evaluate(model, data.splits[split], info.task, device).items()}
    meta = {"arch": arch, "task": info.task, "config": full_config(arch, config),
            "input_spec": spec.to_dict(), "data": data.spec(),
            "training": {**vars(settings), "epochs_run": len(history), "wall_time_s": wall,
                         "members_split": "train", "nonmembers_split": "holdout"},
            "metrics": metrics, "privacy": None, "versions": versions(),
            "hardware": hardware(device), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime()),
            **(extra_meta or {})}
    model = model.cpu()
    if out is not None:
        save_checkpoint(out, model, meta)
    return TrainedModel(model=model, data=data, meta=meta, history=history)
