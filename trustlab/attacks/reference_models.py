"""Many reference (shadow) models of one zoo architecture, trained at once.

LiRA, RMIA and the shadow-model attack need dozens of models trained like the target on random
halves of a population. Training them one after another wastes the machine on Python overhead
and small matrix products; here their weights are stacked with
:func:`torch.func.stack_module_state` and every step runs all of them in one
:func:`torch.func.vmap` over :func:`torch.func.functional_call`. Each model sees its own rows,
its own shuffling and its own dropout, so the result is the same *kind* of models as a loop would
give (``batched=False`` is that loop, kept for architectures vmap cannot batch and as the
benchmark baseline).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from trustlab.errors import ConfigError
from trustlab.train.progress import progress_bar
from trustlab.train.trainer import loss_function, resolve_device, seed_everything
from trustlab.train.zoo import InputSpec, build_model


@dataclass
class RecipeSettings:
    """How the reference models train: mimic the target (same epochs, lr, batch, decay)."""

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 256
    weight_decay: float = 1e-4

    @classmethod
    def from_meta(cls, training: dict, max_epochs: int | None = None) -> "RecipeSettings":
        """The recipe a checkpoint's ``meta['training']`` records (epochs actually run)."""
        epochs = int(training.get("epochs_run") or training.get("epochs") or cls.epochs)
        if max_epochs is not None:
            epochs = min(epochs, max_epochs)
        return cls(epochs=epochs, lr=float(training.get("lr") or cls.lr),
                   batch_size=int(training.get("batch_size") or cls.batch_size),
                   weight_decay=float(training.get("weight_decay") or 0.0))


def half_masks(n_models: int, n_rows: int, seed: int = 0) -> np.ndarray:
    """Inclusion masks ``(n_models, n_rows)``: every row is in exactly half of the models
    (LiRA's balanced design; with an odd count, in ⌊M/2⌋ or ⌈M/2⌉), each model on ~half."""
    if n_models < 1 or n_rows < 2:
        raise ConfigError(f"need n_models >= 1 and n_rows >= 2, got {n_models} and {n_rows}")
    rng = np.random.default_rng(seed)
    if n_models == 1:
        return (rng.permutation(n_rows) < n_rows // 2)[None, :]
    order = rng.random((n_models, n_rows)).argsort(axis=0)
    keep = order < n_models // 2
    if n_models % 2:  # the odd model out takes each row with probability 1/2
        keep |= (order == n_models // 2) & (rng.random(n_rows) < 0.5)[None, :]
    return keep


def batch_schedule(masks: np.ndarray, batch_size: int, epochs: int, seed: int) -> np.ndarray:
    """Row indices ``(steps, n_models, batch)``: per model and epoch a fresh shuffle of its own
    rows, wrapped around to the largest model's length so all models step together."""
    rng = np.random.default_rng(seed)
    rows = [np.flatnonzero(m) for m in masks]
    if min(len(r) for r in rows) == 0:
        raise ConfigError("a reference model has no training rows: use a larger population")
    longest = max(len(r) for r in rows)
    steps = -(-longest // batch_size)
    epochs_out = []
    for _ in range(epochs):
        per_model = [np.resize(rng.permutation(r), steps * batch_size) for r in rows]
        epochs_out.append(np.stack(per_model).reshape(len(rows), steps, batch_size)
                          .transpose(1, 0, 2))
    return np.concatenate(epochs_out)


class ReferenceModels:
    """``n_models`` trained models of one architecture and which population rows each saw."""

    def __init__(self, base: nn.Module, params: dict[str, torch.Tensor],
                 buffers: dict[str, torch.Tensor], masks: np.ndarray) -> None:
        self.base = base
        self.params = params
        self.buffers = buffers
        self.masks = masks

    @property
    def n_models(self) -> int:
        return self.masks.shape[0]

    @torch.no_grad()
    def outputs(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Every model's outputs (logits or reconstructions) on ``X``: ``(n_models, len(X), …)``."""
        self.base.eval()
        device = next(iter(self.params.values())).device

        def one(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (x,))

        try:
            run = vmap(one, in_dims=(0, 0, None))
            chunks = [run(self.params, self.buffers,
                          torch.from_numpy(X[i:i + batch_size]).to(device)).float().cpu()
                      for i in range(0, len(X), batch_size)]
            return torch.cat(chunks, dim=1).numpy()
        except (RuntimeError, NotImplementedError):  # ops vmap cannot batch: model by model
            return np.stack([self._one_model_outputs(m, X, batch_size)
                             for m in range(self.n_models)])

    def _one_model_outputs(self, index: int, X: np.ndarray, batch_size: int) -> np.ndarray:
        params = {k: v[index] for k, v in self.params.items()}
        buffers = {k: v[index] for k, v in self.buffers.items()}
        device = next(iter(self.params.values())).device
        return torch.cat([functional_call(self.base, (params, buffers),
                                          (torch.from_numpy(X[i:i + batch_size]).to(device),))
                          .float().cpu() for i in range(0, len(X), batch_size)]).numpy()

    def model(self, index: int) -> nn.Module:
        """Model ``index`` as an ordinary module (a copy)."""
        module = copy.deepcopy(self.base).to_empty(device="cpu")
        state = {k: v[index].detach().cpu() for k, v in {**self.params, **self.buffers}.items()}
        module.load_state_dict(state)
        return module.eval()


def train_reference_models(arch: str, spec: InputSpec, X: np.ndarray, y: np.ndarray, *,
                           n_models: int, config: dict | None = None,
                           recipe: RecipeSettings | None = None, task: str = "classification",
                           masks: np.ndarray | None = None, seed: int = 0,
                           batched: bool = True, device: str = "auto",
                           show_progress: bool = False) -> ReferenceModels:
    """Train ``n_models`` zoo models ``arch`` on random halves of the population ``(X, y)``.

    ``masks`` (``(n_models, len(X))`` booleans) overrides :func:`half_masks`. An autoencoder
    (``task="reconstruction"``) reconstructs its rows. ``batched=False`` trains one model after
    another with the same rows and batches (the baseline and the fallback).
    """
    recipe = recipe or RecipeSettings()
    masks = half_masks(n_models, len(X), seed) if masks is None else np.asarray(masks, bool)
    if masks.shape != (n_models, len(X)):
        raise ConfigError(f"masks must have shape ({n_models}, {len(X)}), got {masks.shape}")
    seed_everything(seed)
    models = [build_model(arch, spec, config) for _ in range(n_models)]
    schedule = batch_schedule(masks, min(recipe.batch_size, int(masks.sum(1).min())),
                              recipe.epochs, seed)
    dev = resolve_device(device)
    inputs, labels = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    if batched:
        try:
            params, buffers = _train_stacked(models, inputs, labels, schedule, recipe, task,
                                             dev, show_progress)
        except (RuntimeError, NotImplementedError):  # an op vmap cannot batch: one by one
            models = [build_model(arch, spec, config) for _ in range(n_models)]
            batched = False
    if not batched:
        for m, model in enumerate(models):
            _train_single(model.to(dev), inputs, labels, schedule[:, m], recipe, task,
                          show_progress)
        params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    params = {k: v.detach() for k, v in params.items()}
    return ReferenceModels(base, params, buffers, masks)


def _optimizer(params: list[torch.Tensor], recipe: RecipeSettings, steps: int):
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)


def _train_stacked(models: list[nn.Module], X: torch.Tensor, y: torch.Tensor,
                   schedule: np.ndarray, recipe: RecipeSettings, task: str,
                   device: torch.device, show_progress: bool):
    """All models in one vmapped forward/backward per step; AdamW is elementwise, so one
    optimizer over the stacked tensors updates every model independently."""
    for model in models:
        model.to(device).train()
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta").train()
    loss_fn = loss_function(task)

    def one(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(base, (p, b), (xb,)), xb, yb)

    losses = vmap(one, randomness="different")
    optimizer, scheduler = _optimizer(list(params.values()), recipe, len(schedule))
    index = torch.from_numpy(schedule).to(device)
    with progress_bar(f"training {len(models)} reference models (batched)", len(schedule),
                      show_progress) as bar:
        for step in range(len(schedule)):
            rows = index[step]
            optimizer.zero_grad(set_to_none=True)
            loss = losses(params, buffers, X[rows], y[rows]).sum()
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.advance()
    return params, buffers


def _train_single(model: nn.Module, X: torch.Tensor, y: torch.Tensor, schedule: np.ndarray,
                  recipe: RecipeSettings, task: str, show_progress: bool) -> None:
    """One model, the plain way, on ``schedule`` ``(steps, batch)``."""
    model.train()
    loss_fn = loss_function(task)
    optimizer, scheduler = _optimizer(list(model.parameters()), recipe, len(schedule))
    index = torch.from_numpy(schedule).to(X.device)
    with progress_bar("training a reference model", len(schedule), show_progress) as bar:
        for step in range(len(schedule)):
            xb, yb = X[index[step]], y[index[step]]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xb), xb, yb).backward()
            optimizer.step()
            scheduler.step()
            bar.advance()
    model.eval()
