"""``train_private``: a zoo model trained with DP-SGD, privacy facts in the checkpoint meta.

This is what ``trustlab train ARCH DATASET --dp --target-epsilon E`` calls.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from trustlab.errors import ConfigError
from trustlab.privacy.engine import make_private
from trustlab.privacy.optimizer import DPOptimizer
from trustlab.privacy.validators import fix, unfix
from trustlab.train.checkpoint import check_writable, save_checkpoint
from trustlab.train.data import DataBundle, load_dataset
from trustlab.train.trainer import TrainedModel, TrainSettings, train, training_rows
from trustlab.train.zoo import arch_info


# DP-SGD training defaults that override the architecture's non-private ones: large batches
# (the noise is divided by the expected batch size), few epochs (each costs privacy), a higher
# learning rate. mlp on Adult reaches test accuracy ~0.83 at epsilon = 3 in ~115 steps.
DP_TRAINING: dict[str, dict] = {
    "mlp": {"batch_size": 1024, "epochs": 5, "lr": 3e-3},
    "cnn": {"batch_size": 128, "epochs": 30, "lr": 1e-2},
}
# The largest sampling rate q = batch / rows a default batch size may give. Privacy
# amplification by Poisson subsampling needs q well below 1 (at q = 1 every step sees every row
# and there is none; Abadi et al. 2016 trained at q = 0.01), so on a small training set the
# default batch shrinks to rows / 8: at least 8 steps an epoch. 1/8 keeps the tuned CNN on
# digits (128 of 1 077 rows, q = 0.12); it binds for German credit (599 rows: 1024 -> 74).
MAX_DEFAULT_SAMPLE_RATE = 1 / 8


def dp_batch_size(requested: int | None, default: int, rows: int) -> int:
    """The batch size for DP-SGD on ``rows`` training rows: ``requested`` if given (it must be
    below ``rows``), else ``default`` capped at ``rows * MAX_DEFAULT_SAMPLE_RATE``."""
    fitted = max(1, min(default, int(rows * MAX_DEFAULT_SAMPLE_RATE)))
    if requested is not None and requested >= rows:
        raise ConfigError(f"batch size {requested} is not below the {rows} training rows: every "
                          "DP-SGD step would see every row (sampling rate 1, no privacy "
                          f"amplification); pass a smaller batch size or leave it unset "
                          f"(default here: {fitted})")
    return fitted if requested is None else requested


def train_private(arch: str, dataset: str, *, target_epsilon: float, delta: float = 1e-5,
                  max_grad_norm: float = 1.0, settings: TrainSettings | None = None,
                  config: dict | None = None, out: str | Path | None = None,
                  accountant: str = "rdp", noise_seed: int | None = None,
                  secure_mode: bool = False, clipping: str = "flat", show_progress: bool = True,
                  data: DataBundle | None = None, dataset_path: str | Path | None = None,
                  **train_kwargs) -> TrainedModel:
    """Train ``arch`` on ``dataset`` at (``target_epsilon``, ``delta``)-DP with Poisson sampling.

    Layers the kernels do not cover are swapped for DP-friendly equivalents first (LSTM/GRU,
    multi-head attention). Unset ``settings`` fields take :data:`DP_TRAINING`'s values for
    ``arch``, then the architecture's defaults; the batch size fits the training set
    (:func:`dp_batch_size`). The meta's ``privacy`` entry holds σ, q,
    steps, C (with ``clipping="adaptive"``, where the bound ended), ε, δ, the accountant and
    whether ``secure_mode`` drew the noise; ``ε`` is what the run actually spent (early stopping
    may spend less).
    """
    requested = settings or TrainSettings()
    info = arch_info(arch)
    settings = requested.resolved({**info.training, **DP_TRAINING.get(arch, {})})
    data = data or load_dataset(dataset, seed=settings.seed, path=dataset_path)
    rows = len(training_rows(data.splits["train"], info.task))
    settings.batch_size = dp_batch_size(requested.batch_size, settings.batch_size, rows)
    if out is not None:
        check_writable(out)
    engine: list[DPOptimizer] = []

    def wrap(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader
             ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        before = {id(p) for p in model.parameters()}
        model = fix(model)
        if {id(p) for p in model.parameters()} != before:  # new layers: rebuild the optimizer
            accepted = inspect.signature(type(optimizer)).parameters
            optimizer = type(optimizer)([p for p in model.parameters() if p.requires_grad],
                                        **{k: v for k, v in optimizer.defaults.items()
                                           if k in accepted})
        model, dp_optimizer, loader = make_private(
            model, optimizer, loader, target_epsilon=target_epsilon, target_delta=delta,
            max_grad_norm=max_grad_norm, epochs=settings.epochs, accountant=accountant,
            noise_seed=noise_seed, secure_mode=secure_mode, clipping=clipping)
        engine.append(dp_optimizer)
        return model, dp_optimizer, loader

    trained = train(arch, dataset, settings=settings, config=config, out=None, data=data,
                    wrap=wrap, show_progress=show_progress, **train_kwargs)
    dp_optimizer = engine[0]
    dp_optimizer.detach()
    trained.model = unfix(trained.model)
    trained.meta["privacy"] = {**dp_optimizer.privacy_facts(delta).to_dict(),
                               "target_epsilon": target_epsilon, "mechanism": "dp-sgd",
                               "sampling": "poisson"}
    if out is not None:
        save_checkpoint(out, trained.model, trained.meta)
    return trained
