"""Mixed precision (bf16 autocast, as the trainer runs on CUDA; here on the CPU): every zoo
model's clipped sums come out in the parameters' dtype, agree with a per-sample loop under the
same autocast, and no sample exceeds the clipping bound through rounding."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from test_engine_zoo import IMAGE, SMALL, TABULAR
from trustlab.privacy import fix
from trustlab.privacy.tracker import GradSampleTracker
from trustlab.train.zoo import available_archs, build_model


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _case(arch: str, batch: int, scale: float = 1.0):
    torch.manual_seed(0)
    spec = IMAGE if arch in ("cnn", "lstm", "gru", "vit") else TABULAR
    model = fix(build_model(arch, spec, SMALL.get(arch))).eval()
    x = torch.randn(batch, *spec.shape) * scale
    if arch == "autoencoder":
        return model, x, x, F.mse_loss
    return model, x, torch.randint(0, 3, (batch,)), F.cross_entropy


def _engine(model, x, y, loss_fn, max_grad_norm: float, clipping: str = "flat"
            ) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    tracker = GradSampleTracker(model, max_grad_norm, "mean", clipping=clipping)
    tracker.attach()
    with autocast():
        loss = loss_fn(model(x), y)
    loss.backward()
    names = {p: n for n, p in model.named_parameters()}
    return {names[p]: s for p, s in tracker.summed.items()}


def _per_sample_loop(model, x, y, loss_fn, max_grad_norm: float) -> dict[str, torch.Tensor]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        with autocast():
            loss = loss_fn(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = torch.cat([g.flatten() for g in grads]).norm()
        factor = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        total = [t + factor * g for t, g in zip(total, grads)]
    return dict(zip(names, total))


@pytest.mark.parametrize("arch", available_archs())
def test_zoo_model_under_autocast_matches_a_per_sample_loop(arch):
    model, x, y, loss_fn = _case(arch, batch=6)
    got = _engine(model, x, y, loss_fn, 0.5)
    want = _per_sample_loop(model, x, y, loss_fn, 0.5)
    assert set(got) == set(want)
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        err = (value - want[name]).norm() / want[name].norm().clamp(min=1e-12)
        assert err < 0.05, f"{name}: relative error {err:.3f} (bf16 rounding is ~0.01)"


@pytest.mark.parametrize("clipping", ["flat", "per_layer", "automatic"])
@pytest.mark.parametrize("arch", available_archs())
def test_no_sample_exceeds_the_bound_under_autocast(arch, clipping):
    """Per-layer: the layers' bounds C/sqrt(G) have norm C, so the whole stays within C too."""
    model, x, y, loss_fn = _case(arch, batch=1, scale=30.0)
    got = _engine(model, x, y, loss_fn, 1e-3, clipping)
    assert torch.cat([s.flatten() for s in got.values()]).norm() <= 1e-3 * (1 + 1e-5)
