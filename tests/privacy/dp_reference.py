"""Naive references for the DP engine tests: torch.func per-sample gradients, clipped by hand."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from trustlab.privacy.tracker import GradSampleTracker


def per_sample_grads(model: nn.Module, x: Tensor, y: Tensor,
                     loss_fn: Callable[[Tensor, Tensor], Tensor]) -> dict[str, Tensor]:
    """Each sample's gradient (batch first) per parameter name: vmap(grad) of its own loss."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def sample_loss(p: dict, xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)


def reference_clipped_sum(model: nn.Module, x: Tensor, y: Tensor,
                          loss_fn: Callable[[Tensor, Tensor], Tensor], max_grad_norm: float,
                          ) -> tuple[dict[str, Tensor], Tensor]:
    """``sum_i c_i g_i`` per parameter name from vmap(grad) of each sample's own loss."""
    grads = per_sample_grads(model, x, y, loss_fn)
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
    norms = flat.norm(dim=1)
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("b,b...->...", factors, g) for n, g in grads.items()}, norms


def engine_clipped_sum(model: nn.Module, x: Tensor, y: Tensor,
                       loss_fn: Callable[[Tensor, Tensor], Tensor],
                       max_grad_norm: float | list[float], loss_reduction: str = "mean",
                       clipping: str = "flat",
                       ) -> tuple[dict[str, Tensor], Tensor]:
    """The engine's accumulated clipped sums after one backward pass on a tapped copy."""
    model = copy.deepcopy(model)
    tracker = GradSampleTracker(model, max_grad_norm, loss_reduction, clipping=clipping)
    tracker.attach()
    loss_fn(model(x), y).backward()
    by_param = {p: n for n, p in model.named_parameters()}
    out = {by_param[p]: s for p, s in tracker.summed.items()}
    assert all(p.grad is None for p in model.parameters()), "autograd computed a weight grad"
    tracker.detach()
    return out, tracker.last_sq_norms.sqrt()


def assert_close_sums(got: dict[str, Tensor], want: dict[str, Tensor], rtol: float = 1e-5) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        scale = want[name].abs().max().clamp(min=1e-12)
        err = (got[name] - want[name]).abs().max() / scale
        assert err <= rtol, f"{name}: relative error {err:.2e}"


@pytest.fixture(autouse=True)
def float64_default():
    """float64 so that 1e-5 relative agreement tests the algebra, not rounding (autouse in the
    modules that import it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> list[int]:
    """The usual private loop, one ``step()`` per batch (an empty one included); batch sizes."""
    sizes = []
    for x, y in batches:
        sizes.append(len(x))
        optimizer.zero_grad()
        if len(x):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return sizes
