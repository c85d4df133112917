"""AutoAttack as its authors run it (Croce & Hein, 2020): an ensemble that attacks only the
points still standing.

APGD-CE and APGD-DLR are our batched torch implementation of Auto-PGD (step-size halving at the
checkpoints p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), momentum 0.75),
tested against ART's ``AutoProjectedGradientDescent``. Square (L∞) is our batched torch version
of Andriushchenko et al.'s attack (ART's loops in numpy and was ~100× slower here), tested
against ART's ``SquareAttack``; L2 Square is ART's. Square runs only on the points both APGD
runs left correctly classified. ART's own ``AutoAttack`` runs every
attack on every point (and Square with 5 restarts), which costs minutes on the digits CNN for
the same robust accuracy; ``benchmarks/autoattack.py`` measures both side by side.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trustlab.attacks.evasion import (Threat, input_gradient, project, square, steepest_step)
from trustlab.errors import ConfigError
from trustlab.train.data import DataBundle
from trustlab.train.trainer import predict

ATTACKS = ("apgd-ce", "apgd-dlr", "square")


def _checkpoints(n_iter: int) -> list[int]:
    """Iterations at which APGD decides whether to halve its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * n_iter) for q in p[1:] if q < 1})


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, *,
         loss: str = "ce", n_iter: int = 100, rho: float = 0.75,
         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Auto-PGD on one batch: (best adversarial inputs, whether each point was fooled)."""
    lower, upper, mask = threat.tensors(x.device)
    shape = (-1, *[1] * (x.dim() - 1))
    start = (torch.rand(x.shape, generator=generator) * 2 - 1) * mask
    start = start / (start.flatten(1).abs().amax(1) if threat.norm == "inf"
                     else start.flatten(1).norm(dim=1)).clamp_min(1e-12).view(shape)
    x_adv = project(x + threat.eps * start, x, threat, lower, upper, mask)
    loss_now, grad, logits = input_gradient(model, x_adv, y, loss)
    x_best_adv, fooled = x.clone(), logits.argmax(1) != y
    x_best_adv[fooled] = x_adv[fooled]
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss_now.clone()
    step = torch.full((len(x),), 2.0 * threat.eps).view(shape)
    x_prev = x_adv.clone()
    history = torch.empty(n_iter + 1, len(x))  # history[0]: the loss at the random start
    history[0] = loss_now
    checkpoints, last_check = _checkpoints(n_iter), 0
    reduced_last = torch.ones(len(x), dtype=torch.bool)
    loss_best_last = loss_best.clone()
    for i in range(n_iter):
        momentum = 0.75 if i > 0 else 1.0
        z = project(x_adv + step * steepest_step(grad * mask, threat.norm), x, threat,
                    lower, upper, mask)
        z = project(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev), x,
                    threat, lower, upper, mask)
        x_prev, x_adv = x_adv, z
        loss_now, grad, logits = input_gradient(model, x_adv, y, loss)
        wrong = logits.argmax(1) != y
        x_best_adv[wrong] = x_adv[wrong]
        fooled |= wrong
        history[i + 1] = loss_now
        better = loss_now > loss_best
        x_best[better], grad_best[better], loss_best[better] = (x_adv[better], grad[better],
                                                                loss_now[better])
        if i + 1 in checkpoints:
            window = i + 1 - last_check
            increases = (history[last_check + 1:i + 2] > history[last_check:i + 1]).sum(0)
            oscillating = increases < window * rho
            stalled = ~reduced_last & (loss_best_last >= loss_best)
            halve = oscillating | stalled
            reduced_last, loss_best_last, last_check = halve, loss_best.clone(), i + 1
            step[halve] /= 2
            x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
    return x_best_adv.detach(), fooled


def _square_fraction(p_init: float, iteration: int, n_queries: int) -> float:
    """Square's schedule for the fraction of pixels a square covers (rescaled to 10,000)."""
    it = int(iteration / n_queries * 10000)
    halvings = sum(it > bound for bound in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2 ** halvings


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the true class minus the best other logit (negative: fooled)."""
    with torch.no_grad():
        logits = model(x)
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], -torch.inf).amax(1)


def square_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, *,
                n_queries: int = 1000, p_init: float = 0.8,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Andriushchenko et al.'s L∞ Square attack, batched: one square position per iteration
    shared by the batch, a random ±ε colour per image and channel, kept where the margin
    drops. Queries only the points not yet fooled. Images (N, C, H, W) only."""
    lower, upper, mask = threat.tensors(x.device)
    n, channels, height, width = x.shape
    eps = threat.eps
    signs = torch.randint(0, 2, (n, channels, 1, width), generator=generator) * 2 - 1
    best = torch.max(torch.min(x + eps * signs * mask, upper), lower)
    margin = _margin(model, best, y)
    for i in range(n_queries):
        active = torch.nonzero(margin > 0).squeeze(1)
        if not len(active):
            break
        p = _square_fraction(p_init, i, n_queries)
        side = min(max(int(round(math.sqrt(p * height * width))), 1), height - 1, width - 1)
        row = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        col = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        candidate = best[active].clone()
        colour = (torch.randint(0, 2, (len(active), channels, 1, 1), generator=generator) * 2 - 1)
        window = x[active, :, row:row + side, col:col + side] + eps * colour
        candidate[:, :, row:row + side, col:col + side] = window
        candidate = project(candidate, x[active], threat, lower, upper, mask)
        new_margin = _margin(model, candidate, y[active])
        improved = new_margin < margin[active]
        best[active[improved]] = candidate[improved]
        margin[active[improved]] = new_margin[improved]
    return best, margin <= 0


@dataclass
class AutoAttackResult:
    """Adversarial inputs, per-point robustness, and what each stage did."""

    x_adv: np.ndarray
    robust: np.ndarray  # bool: still correctly classified after every attack
    stages: list[dict] = field(default_factory=list)  # name, attacked, robust_accuracy, seconds

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.mean())


def autoattack(model: nn.Module, X: np.ndarray, y: np.ndarray, data: DataBundle, threat: Threat,
               *, attacks: tuple[str, ...] = ATTACKS, n_iter: int = 100,
               square_queries: int = 1000, square_restarts: int = 1, batch_size: int = 512,
               seed: int = 0) -> AutoAttackResult:
    """Run ``attacks`` in order, each only on the points every earlier one failed to fool.

    APGD-DLR needs three or more classes and Square needs images; where they do not apply they
    are skipped and the stage says why.
    """
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ConfigError(f"unknown AutoAttack component(s) {sorted(unknown)}; choose from {ATTACKS}")
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    x_adv = X.copy()
    robust = predict(model, X).argmax(1) == y
    stages = [{"name": "clean", "attacked": len(X), "robust_accuracy": float(robust.mean()),
               "seconds": 0.0}]
    for name in attacks:
        standing = np.flatnonzero(robust)
        skip = _skip_reason(name, data)
        started = time.perf_counter()
        if skip is None and len(standing):
            found, fooled = _run(name, model, X[standing], y[standing], data, threat,
                                 n_iter=n_iter, square_queries=square_queries,
                                 square_restarts=square_restarts, batch_size=batch_size,
                                 generator=generator, seed=seed)
            x_adv[standing[fooled]] = found[fooled]
            robust[standing[fooled]] = False
        stages.append({"name": name, "attacked": 0 if skip else len(standing),
                       "robust_accuracy": float(robust.mean()),
                       "seconds": time.perf_counter() - started, "skipped": skip})
    return AutoAttackResult(x_adv=x_adv, robust=robust, stages=stages)


def _skip_reason(name: str, data: DataBundle) -> str | None:
    if name == "apgd-dlr" and data.n_classes < 3:
        return "APGD-DLR needs at least 3 classes"
    if name == "square" and data.modality != "image":
        return "Square is defined on images"
    return None


def _run(name: str, model: nn.Module, X: np.ndarray, y: np.ndarray, data: DataBundle,
         threat: Threat, *, n_iter: int, square_queries: int, square_restarts: int,
         batch_size: int, generator: torch.Generator, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(adversarial inputs, fooled mask) of one component on the standing points."""
    if name == "square" and threat.norm == "2":  # ours is L∞ only: ART's for L2
        found = square(model, X, y, data, threat, queries=square_queries,
                       restarts=square_restarts, seed=seed)
        return found, predict(model, found).argmax(1) != y
    if name == "square":
        found, fooled = torch.from_numpy(X.copy()), torch.zeros(len(X), dtype=torch.bool)
        for _ in range(square_restarts):
            left = torch.nonzero(~fooled).squeeze(1)
            adv, hit = square_linf(model, torch.from_numpy(X[left.numpy()]),
                                   torch.from_numpy(y[left.numpy()]), threat,
                                   n_queries=square_queries, generator=generator)
            found[left], fooled[left] = adv, hit
        return found.numpy(), fooled.numpy()
    loss = name.split("-")[1]
    found, fooled = np.empty_like(X), np.zeros(len(X), dtype=bool)
    for start in range(0, len(X), batch_size):
        part = slice(start, start + batch_size)
        adv, hit = apgd(model, torch.from_numpy(X[part]), torch.from_numpy(y[part]), threat,
                        loss=loss, n_iter=n_iter, generator=generator)
        found[part], fooled[part] = adv.numpy(), hit.numpy()
    return found, fooled
