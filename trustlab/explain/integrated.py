"""Integrated Gradients with per-example, adaptively placed steps, refined until completeness holds.

IG's completeness axiom says Σ attributions = f(x) − f(baseline); the gap is the quadrature
error of the path integral ∫₀¹ ∇f(b + α(x − b))·(x − b) dα. Most examples meet a 1e-2 relative
gap with a few dozen points; a few have sharp turns along the path (ReLU kinks, normalisation of
near-black inputs) and need thousands under a uniform rule. So each example's path is cut into
intervals with a 4-point Gauss–Legendre rule each. On an interval [a, c] the exact integral of
the directional derivative is known from two forward passes, f(c) − f(a), so every interval's own
completeness gap is measured, and only the worst intervals of examples above the tolerance are
halved. Examples that meet the tolerance stop early; hard ones get points where they are hard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import nn

from trustlab.errors import ConfigError

NEGLIGIBLE_FRACTION = 0.01  # examples with |f(x) − f(b)| under 1% of the largest are not judged
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(4)  # on [-1, 1]
_SPLIT_FRACTION = 0.3  # each round halves an example's intervals with gap ≥ 30% of its worst


@dataclass
class IGResult:
    """Attributions, the gradient evaluations each example used, and the completeness gaps."""

    attributions: torch.Tensor
    steps: np.ndarray  # (N,) gradient evaluations (path points) per example
    delta: np.ndarray  # (N,) Σ attributions − (f(x) − f(baseline))
    output_change: np.ndarray  # (N,) f(x) − f(baseline) for the target
    judged: np.ndarray  # (N,) bool: |f(x) − f(b)| ≥ 1% of the largest, so the relative gap counts

    @property
    def relative_gap(self) -> np.ndarray:
        """|delta| / |f(x) − f(b)|, with the denominator floored at 1% of the largest change."""
        return np.abs(self.delta) / completeness_scale(self.output_change)

    @property
    def worst_relative_gap(self) -> float:
        """The largest relative gap over the judged examples (what the acceptance bound checks)."""
        gaps = self.relative_gap[self.judged]
        return float(gaps.max()) if gaps.size else 0.0


def completeness_scale(output_change: np.ndarray) -> np.ndarray:
    """Per-example denominator of the relative gap: |f(x) − f(b)|, floored at 1% of the max."""
    magnitude = np.abs(output_change)
    floor = NEGLIGIBLE_FRACTION * (magnitude.max() if magnitude.size else 0.0)
    return np.maximum(magnitude, max(floor, 1e-12))


def judged_examples(output_change: np.ndarray) -> np.ndarray:
    """Examples whose |f(x) − f(b)| is at least 1% of the largest (their relative gap counts)."""
    magnitude = np.abs(output_change)
    return magnitude >= NEGLIGIBLE_FRACTION * magnitude.max()


def integrated_gradients(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                         baselines: torch.Tensor | None = None, *, n_steps: int = 50,
                         method: str = "gausslegendre",
                         internal_batch_size: int | None = None) -> IGResult:
    """Captum's IG, one step count for all inputs, as an ``IGResult`` (the uniform reference)."""
    target, baselines = _prepare(inputs, target, baselines)
    attributions, delta = IntegratedGradients(model).attribute(
        inputs, baselines=baselines, target=target, n_steps=n_steps, method=method,
        internal_batch_size=internal_batch_size, return_convergence_delta=True)
    change = _target_outputs(model, inputs, target) - _target_outputs(model, baselines, target)
    return IGResult(attributions.detach(), np.full(len(inputs), n_steps),
                    delta.detach().double().numpy(), change, judged_examples(change))


def adaptive_integrated_gradients(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                                  baselines: torch.Tensor | None = None, *, tol: float = 1e-2,
                                  start_intervals: int = 4, max_steps: int = 8192,
                                  internal_batch_size: int = 2048) -> IGResult:
    """IG refined per example until its completeness gap |Σ attributions − (f(x) − f(b))| is at
    most ``tol`` · |f(x) − f(b)| (the denominator floored at 1% of the largest change).

    Each round halves, in every example still above ``tol``, the intervals whose local gap is at
    least 30% of that example's worst. An example stops being refined at ``max_steps`` gradient
    evaluations; its remaining gap is reported, not hidden.
    ``internal_batch_size`` bounds how many path points go through the model at once.
    """
    if tol <= 0 or start_intervals < 1 or max_steps < start_intervals * len(_NODES):
        raise ConfigError(f"need tol > 0, start_intervals ≥ 1 and max_steps ≥ "
                          f"{len(_NODES)}·start_intervals; got tol={tol}, start_intervals="
                          f"{start_intervals}, max_steps={max_steps}")
    target, baselines = _prepare(inputs, target, baselines)
    path = _Path(model, inputs, baselines, target, internal_batch_size)
    change = path.values(np.arange(len(inputs)), np.ones(len(inputs))) - \
        path.values(np.arange(len(inputs)), np.zeros(len(inputs)))
    budget = tol * completeness_scale(change)
    edges = np.linspace(0.0, 1.0, start_intervals + 1)
    owner = np.repeat(np.arange(len(inputs)), start_intervals)
    lo, hi = np.tile(edges[:-1], len(inputs)), np.tile(edges[1:], len(inputs))
    f_edges = path.values(np.repeat(np.arange(len(inputs)), start_intervals + 1),
                          np.tile(edges, len(inputs))).reshape(len(inputs), -1)
    f_lo, f_hi = f_edges[:, :-1].reshape(-1), f_edges[:, 1:].reshape(-1)
    grads, integral = path.rule(owner, lo, hi)
    while True:
        local = integral - (f_hi - f_lo)
        total = np.abs(np.bincount(owner, local, len(inputs)))
        count = np.bincount(owner, minlength=len(inputs))
        active = (total > budget) & (2 * count * len(_NODES) <= max_steps)
        worst = np.zeros(len(inputs))
        np.maximum.at(worst, owner, np.abs(local))
        split = active[owner] & (np.abs(local) >= _SPLIT_FRACTION * worst[owner])
        if not split.any():
            break
        mid = (lo[split] + hi[split]) / 2
        f_mid = path.values(owner[split], mid)
        keep = ~split
        owner = np.concatenate([owner[keep], owner[split], owner[split]])
        new_lo, new_hi = np.concatenate([lo[split], mid]), np.concatenate([mid, hi[split]])
        new_grads, new_integral = path.rule(owner[keep.sum():], new_lo, new_hi)
        f_lo = np.concatenate([f_lo[keep], f_lo[split], f_mid])
        f_hi = np.concatenate([f_hi[keep], f_mid, f_hi[split]])
        lo, hi = np.concatenate([lo[keep], new_lo]), np.concatenate([hi[keep], new_hi])
        grads = torch.cat([grads[torch.from_numpy(keep)], new_grads])
        integral = np.concatenate([integral[keep], new_integral])
    summed = torch.zeros(len(inputs), grads.shape[1], dtype=grads.dtype)
    summed.index_add_(0, torch.from_numpy(owner), grads)
    attributions = (summed.to(inputs.dtype).view_as(inputs) * (inputs - baselines)).detach()
    delta = attributions.reshape(len(inputs), -1).double().sum(dim=1).numpy() - change
    steps = np.bincount(owner, minlength=len(inputs)) * len(_NODES)
    return IGResult(attributions, steps, delta, change, judged_examples(change))


class _Path:
    """Forward values and weighted gradients along each example's straight path."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, baselines: torch.Tensor,
                 target: torch.Tensor, batch: int) -> None:
        self.model, self.batch, self.target = model, batch, target
        self.start = baselines.reshape(len(inputs), -1)
        self.step = (inputs - baselines).reshape(len(inputs), -1)
        self.shape = inputs.shape[1:]

    def _points(self, owner: np.ndarray, alpha: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(owner)
        a = torch.from_numpy(alpha).to(self.start.dtype)[:, None]
        return (self.start[index] + a * self.step[index]).view(-1, *self.shape), index

    @torch.no_grad()
    def values(self, owner: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """f_target(b + α (x − b)) for each (example, α) pair."""
        out = []
        for i in range(0, len(owner), self.batch):
            points, index = self._points(owner[i:i + self.batch], alpha[i:i + self.batch])
            logits = self.model(points)
            out.append(logits[torch.arange(len(index)), self.target[index]].double())
        return torch.cat(out).numpy() if out else np.zeros(0)

    def rule(self, owner: np.ndarray, lo: np.ndarray,
             hi: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Per interval: Σ w ∇f over its Gauss–Legendre nodes (flat, (I, D)) and the rule's
        estimate of ∫ ∇f·(x − b) dα over it."""
        half = (hi - lo)[:, None] / 2
        alpha = ((lo + hi)[:, None] / 2 + half * _NODES).reshape(-1)
        weight = (half * _WEIGHTS).reshape(-1)
        node_owner = np.repeat(owner, len(_NODES))
        grads = []
        for i in range(0, len(alpha), self.batch):
            points, index = self._points(node_owner[i:i + self.batch], alpha[i:i + self.batch])
            points.requires_grad_(True)
            with torch.enable_grad():
                logits = self.model(points)
                picked = logits[torch.arange(len(index)), self.target[index]].sum()
                (grad,) = torch.autograd.grad(picked, points)
            grads.append(grad.reshape(len(index), -1).double())
        weighted = (torch.cat(grads) * torch.from_numpy(weight)[:, None]).view(
            len(owner), len(_NODES), -1).sum(dim=1)
        integral = (weighted * self.step[torch.from_numpy(owner)].double()).sum(dim=1).numpy()
        return weighted, integral


def _prepare(inputs: torch.Tensor, target: torch.Tensor | int,
             baselines: torch.Tensor | float | None) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.as_tensor(target)
    target = target.expand(len(inputs)) if target.dim() == 0 else target
    if len(target) != len(inputs):
        raise ConfigError(f"target has {len(target)} entries for {len(inputs)} inputs")
    baselines = torch.zeros_like(inputs) if baselines is None else \
        torch.as_tensor(baselines, dtype=inputs.dtype).expand_as(inputs)
    return target, baselines


@torch.no_grad()
def _target_outputs(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    return model(inputs)[torch.arange(len(inputs)), target].double().numpy()
