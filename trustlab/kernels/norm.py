"""LayerNorm / RMSNorm / GroupNorm / InstanceNorm affine parameters: per-sample
``sum_t g_t * xhat_t`` and ``sum_t g_t``.

These per-sample gradients are (B, C): small, so they are formed directly, in the backward pass
(the records hold them instead of the normalised input and output gradient).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.kernels.clip import scale_accumulate
from trustlab.kernels.linear import row_sq_norms
from trustlab.kernels.registry import LayerKernel, Record, Sink, register_kernel, use_triton


class _LayerNormTap(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                shape: list[int], eps: float, sink: Sink) -> Tensor:
        out, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.shape, ctx.sink = shape, sink
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        width = weight.numel() if weight is not None else bias.numel()
        xr, mr, rr = _per_sample_rows(x, width), _per_sample_rows(mean), _per_sample_rows(rstd)
        ctx.sink(affine_record(lambda rows: (xr[rows] - mr[rows]) * rr[rows],
                               _per_sample_rows(g, width)))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_layer_norm_backward(
                g, x, ctx.shape, mean, rstd, weight, bias, [True, False, False])[0]
        return grad_x, None, None, None, None, None


class _RMSNormTap(torch.autograd.Function):
    """F.rms_norm whose backward records the per-sample weight gradients ``sum_t g_t * xhat_t``
    (``xhat = x / rms(x)``) and returns the input gradient
    ``r (g w - xhat mean(g w xhat))`` (``r = 1 / rms(x)``, means over the normalised dims)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, shape: list[int], eps: float | None,
                sink: Sink) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.shape, ctx.eps, ctx.sink = shape, eps, sink
        return F.rms_norm(x, shape, weight, eps)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        dims = tuple(range(-len(ctx.shape), 0))
        eps = torch.finfo(x.dtype).eps if ctx.eps is None else ctx.eps  # as F.rms_norm
        rstd = torch.rsqrt(x.square().mean(dims, keepdim=True) + eps)
        xhat = x * rstd  # once, for the record and the input gradient
        width = math.prod(ctx.shape)
        xr = _per_sample_rows(xhat, width)
        ctx.sink(affine_record(lambda rows: xr[rows], _per_sample_rows(g, width)))
        grad_x = None
        if ctx.needs_input_grad[0]:
            gw = g * weight
            grad_x = rstd * (gw - xhat * (gw * xhat).mean(dims, keepdim=True))
        return grad_x, None, None, None, None


class _GroupNormTap(torch.autograd.Function):
    """GroupNorm whose backward also yields the per-sample affine gradients, in the same
    ATen call: with the batch folded into the groups (one sample of B·groups groups, the
    weight repeated B times) the input gradient is unchanged (each (sample, group) is
    normalised on its own) and the weight and bias gradients come out per sample."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int,
                eps: float, sink: Sink) -> Tensor:
        x = x.contiguous()  # ATen's group norm takes contiguous inputs (torch's layer copies)
        n, c = x.shape[:2]
        out, mean, rstd = torch.native_group_norm(x, weight, bias, n, c,
                                                  math.prod(x.shape[2:]), groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups, ctx.sink = groups, sink
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[:2]
        if n == 0:  # an empty (Poisson) batch: nothing to fold
            ctx.sink(Record(g.new_zeros(0, c), g.new_zeros(0, c)))
            return torch.zeros_like(x), None, None, None, None, None
        folded = (1, n * c, math.prod(x.shape[2:]))
        grad_x, wgrad, bgrad = torch.ops.aten.native_group_norm_backward(
            g.reshape(folded), x.reshape(folded), mean.reshape(1, -1), rstd.reshape(1, -1),
            weight.repeat(n) if weight is not None else None, 1, n * c, folded[2],
            n * ctx.groups, [ctx.needs_input_grad[0], True, True])
        ctx.sink(Record(wgrad.view(n, c), bgrad.view(n, c)))
        return (grad_x.view_as(x) if grad_x is not None else None), None, None, None, None, None


def _per_sample_rows(t: Tensor, width: int = 1) -> Tensor:
    """(B, T, width) view of a (B, ...) tensor whose trailing elements form rows of ``width``
    (an empty batch included, where a -1 in the shape would be ambiguous)."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]) // width, width)


def affine_grads(xhat: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample (B, C) weight and bias gradients from (B, T, C) xhat and g."""
    if use_triton(g):
        return triton_affine_grads(xhat, g)
    return (g * xhat).sum(1), g.sum(1)


_CHUNK_ELEMS = 1 << 20  # elements of the normalised input formed at once on the torch path


def affine_record(xhat: Callable[[slice], Tensor], g: Tensor) -> Record:
    """The per-sample (B, C) weight and bias gradients as the record (``a``, ``g``), formed
    in the backward pass so that the layer's input and output gradient are freed at once.
    ``xhat(rows)`` normalises the input of a slice of samples, (b, T, C) like ``g``; on the
    torch path it is formed a few samples at a time (no input-sized temporaries: fresh
    large allocations cost page faults on every step on CPU)."""
    if use_triton(g):
        wgrad, bgrad = affine_grads(xhat(slice(None)), g)
        return Record(wgrad, bgrad)
    step = max(1, _CHUNK_ELEMS // max(math.prod(g.shape[1:]), 1))
    parts = [affine_grads(xhat(slice(i, i + step)), g[i:i + step])
             for i in range(0, g.shape[0], step)]
    if not parts:
        return Record(g.new_zeros(0, g.shape[2]), g.new_zeros(0, g.shape[2]))
    return Record(torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts]))


@functools.cache
def _triton() -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit
    def affine(x_ptr, g_ptr, w_ptr, b_ptr, T, C, sxb, sxt, sxc, sgb, sgt, sgc,
               BT: tl.constexpr, BC: tl.constexpr):
        b = tl.program_id(0)
        rc = tl.program_id(1) * BC + tl.arange(0, BC)
        wacc = tl.zeros((BC,), dtype=tl.float32)
        bacc = tl.zeros((BC,), dtype=tl.float32)
        for t0 in range(0, T, BT):
            rt = t0 + tl.arange(0, BT)
            m = (rt[:, None] < T) & (rc[None, :] < C)
            x = tl.load(x_ptr + b * sxb + rt[:, None] * sxt + rc[None, :] * sxc, mask=m, other=0.0)
            g = tl.load(g_ptr + b * sgb + rt[:, None] * sgt + rc[None, :] * sgc, mask=m, other=0.0)
            wacc += tl.sum(g * x, axis=0)
            bacc += tl.sum(g, axis=0)
        tl.store(w_ptr + b * C + rc, wacc, mask=rc < C)
        tl.store(b_ptr + b * C + rc, bacc, mask=rc < C)

    return SimpleNamespace(affine=affine)


def triton_affine_grads(xhat: Tensor, g: Tensor, block: int = 32) -> tuple[Tensor, Tensor]:
    import triton

    xhat, g = xhat.float(), g.float()
    batch, seq, width = g.shape
    wgrad = torch.empty(batch, width, dtype=torch.float32, device=g.device)
    bgrad = torch.empty_like(wgrad)
    if batch:
        _triton().affine[(batch, triton.cdiv(width, block))](
            xhat, g, wgrad, bgrad, seq, width, *xhat.stride(), *g.stride(), BT=16, BC=block)
    return wgrad, bgrad


class _AffineKernel(LayerKernel):
    """Shared logic of the normalisation layers: per-sample grads are formed directly."""

    parameters = ("weight", "bias")

    def per_sample_grads(self, layer: nn.Module, records: list[Record]) -> dict[str, Tensor]:
        wgrad = sum(r.a for r in records)  # a layer used several times: its calls add up
        bgrad = sum(r.g for r in records)
        out = {}
        for name, grads in (("weight", wgrad), ("bias", bgrad)):
            param = getattr(layer, name, None)  # RMSNorm has no bias
            if param is not None and param.requires_grad:
                out[name] = grads.view(-1, *param.shape)
        return out

    def sq_norms(self, layer: nn.Module, records: list[Record]) -> tuple[Tensor, Any]:
        grads = self.per_sample_grads(layer, records)
        norms = sum(row_sq_norms(v) for v in grads.values())
        return norms, grads

    def clipped_sum(self, layer: nn.Module, records: list[Record], state: Any,
                    weights: Tensor) -> dict[str, Tensor]:
        return {k: scale_accumulate(v.flatten(1), weights).view(v.shape[1:])
                for k, v in state.items()}


@register_kernel
class LayerNormKernel(_AffineKernel):
    module_type = nn.LayerNorm

    def capture(self, layer: nn.LayerNorm, sink: Sink, x: Tensor) -> Tensor:
        return _LayerNormTap.apply(x, layer.weight, layer.bias, list(layer.normalized_shape),
                                   layer.eps, sink)


@register_kernel
class GroupNormKernel(_AffineKernel):
    module_type = nn.GroupNorm

    def capture(self, layer: nn.GroupNorm, sink: Sink, x: Tensor) -> Tensor:
        return _GroupNormTap.apply(x, layer.weight, layer.bias, layer.num_groups, layer.eps,
                                   sink)


@register_kernel
class RMSNormKernel(_AffineKernel):
    module_type = nn.RMSNorm

    def capture(self, layer: nn.RMSNorm, sink: Sink, x: Tensor) -> Tensor:
        return _RMSNormTap.apply(x, layer.weight, list(layer.normalized_shape), layer.eps, sink)


@register_kernel
class InstanceNormKernel(_AffineKernel):
    """InstanceNorm1d/2d/3d with affine parameters: a GroupNorm of one channel per group (the
    validator refuses running statistics, which the tap does not update)."""

    module_type = nn.modules.instancenorm._InstanceNorm
    function_methods = ("forward", "_apply_instance_norm")

    def capture(self, layer: nn.Module, sink: Sink, x: Tensor) -> Tensor:
        return _GroupNormTap.apply(x, layer.weight, layer.bias, layer.num_features, layer.eps,
                                   sink)
