"""nn.Conv1d / nn.Conv2d: per-sample gradients as one grouped convolution backward.

Folding the batch into the channel groups (input (1, B·C, ...), output grads (1, B·out, ...),
B·G groups) makes ATen's weight-gradient kernel return every sample's gradient at once
(B, out, C/G, k...), at the FLOP count of the batched weight gradient and without an im2col
copy of the input (folds of at most ``FOLD_CHUNK`` samples: larger ones run slower on CPU).
When they are small they are formed in the backward pass and recorded instead of the input
and output gradient, which are then freed at once (the clipped sum is ``sum_i c_i G_i``);
otherwise the record keeps (x, g), the per-sample gradients are reduced to norms chunk by chunk
and the clipped sum is one weight-gradient call on rescaled output gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.kernels.clip import scale_accumulate
from trustlab.kernels.linear import KEEP_LIMIT_ELEMS
from trustlab.kernels.registry import LayerKernel, Record, Sink, register_kernel


class _ConvTap(torch.autograd.Function):
    """F.conv{1,2}d whose backward returns only the input gradient and records (x, g)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, args: tuple,
                sink: Sink) -> Tensor:
        stride, padding, dilation, groups = args
        ctx.save_for_backward(x, weight)
        ctx.args, ctx.sink = args, sink
        conv = F.conv1d if x.dim() == 3 else F.conv2d
        return conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        record = Record(x, g, meta={"args": ctx.args, "weight_shape": weight.shape})
        if not ctx.needs_input_grad[1] or len(x) * weight.numel() <= KEEP_LIMIT_ELEMS:
            record = _per_sample_record(record, ctx.needs_input_grad[1])
        ctx.sink(record)
        grad_x = None
        if ctx.needs_input_grad[0]:
            stride, padding, dilation, groups = ctx.args
            grad_x = torch.ops.aten.convolution_backward(
                g, x, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
                [True, False, False])[0]
        return grad_x, None, None, None, None


def _conv_backward(g: Tensor, x: Tensor, weight_shape: torch.Size, args: tuple,
                   folds: int) -> Tensor:
    """ATen's weight gradient; ``folds`` > 1 folds that many samples into the groups, giving
    per-sample weight gradients."""
    stride, padding, dilation, groups = args
    if folds > 1:
        x = x.reshape(1, -1, *x.shape[2:])
        g = g.reshape(1, -1, *g.shape[2:])
        weight_shape = (folds * weight_shape[0], *weight_shape[1:])
    weight = x.new_zeros(()).expand(weight_shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(g, x, weight, None, stride, padding, dilation,
                                               False, [0] * len(stride), groups * folds,
                                               [False, True, False])[1]


def _explicit_padding(layer: nn.Module, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Apply non-zero padding modes and 'same'/'valid' up front; return integer padding."""
    if layer.padding_mode != "zeros":
        return F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), \
            (0,) * len(layer.kernel_size)
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return x, (0,) * len(layer.kernel_size)
        pads: list[int] = []
        for k, d in zip(reversed(layer.kernel_size), reversed(layer.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads), (0,) * len(layer.kernel_size)
    return x, tuple(layer.padding)


FOLD_CHUNK = 128  # samples folded into one grouped call: larger folds run slower on CPU


def _fold_chunks(record: Record) -> list[Tensor]:
    """One call's per-sample weight gradients as flat (b, numel) chunks of at most
    ``FOLD_CHUNK`` samples each (in batch order)."""
    shape, args = record.meta["weight_shape"], record.meta["args"]
    return [_conv_backward(g, x, shape, args, len(x)).view(len(x), -1)
            for x, g in zip(record.a.split(FOLD_CHUNK), record.g.split(FOLD_CHUNK))]


def _per_sample_record(record: Record, weight: bool) -> Record:
    """The call's per-sample gradients as the record: ``a`` the flat (B, numel) weight
    gradients (empty when the weight is frozen), ``g`` the (B, out) bias gradients."""
    x, g = record.a, record.g
    grads = torch.cat(_fold_chunks(record)) if weight and len(x) else g.new_zeros(len(x), 0)
    return Record(grads, g.flatten(2).sum(2), meta={**record.meta, "per_sample": True})


def per_sample_weight_grads(records: list[Record]) -> list[Tensor]:
    """Per-sample weight gradients, summed over the layer's calls, as flat (b, numel) chunks
    (in batch order)."""
    chunks: list[Tensor] = []
    for r in records:
        parts = [r.a] if r.meta.get("per_sample") else _fold_chunks(r)
        chunks = parts if not chunks else [c + p for c, p in zip(chunks, parts)]
    return chunks


def _bias_grads(records: list[Record]) -> Tensor:
    return sum(r.g if r.meta.get("per_sample") else r.g.flatten(2).sum(2) for r in records)


@register_kernel
class Conv2dKernel(LayerKernel):
    module_type = nn.Conv2d

    def capture(self, layer: nn.Module, sink: Sink, x: Tensor) -> Tensor:
        x, padding = _explicit_padding(layer, x)
        args = (tuple(layer.stride), padding, tuple(layer.dilation), layer.groups)
        return _ConvTap.apply(x, layer.weight, layer.bias, args, sink)

    def sq_norms(self, layer: nn.Module, records: list[Record]) -> tuple[Tensor, Any]:
        batch = records[0].a.shape[0]
        total = records[0].g.new_zeros(batch)
        kept = None
        if layer.weight.requires_grad and batch:
            chunks = per_sample_weight_grads(records)
            total += torch.cat([torch.linalg.vector_norm(c, dim=1) for c in chunks]).square()
            kept = chunks[0] if records[0].meta.get("per_sample") else None
        if layer.bias is not None and layer.bias.requires_grad:
            total += _bias_grads(records).square().sum(1)
        return total, kept

    def clipped_sum(self, layer: nn.Module, records: list[Record], state: Any,
                    weights: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if layer.weight.requires_grad:
            if state is not None:  # sum_i c_i G_i over the kept per-sample gradients
                out["weight"] = scale_accumulate(state, weights).view(layer.weight.shape)
            else:  # one weight-gradient call per use on rescaled output gradients
                out["weight"] = sum(
                    _conv_backward(r.g * weights.view(-1, *[1] * (r.g.dim() - 1)), r.a,
                                   layer.weight.shape, r.meta["args"], 1) for r in records)
        if layer.bias is not None and layer.bias.requires_grad:
            out["bias"] = weights @ _bias_grads(records)
        return out

    def per_sample_grads(self, layer: nn.Module, records: list[Record]) -> dict[str, Tensor]:
        grads = torch.cat(per_sample_weight_grads(records))
        out = {"weight": grads.view(-1, *layer.weight.shape)}
        if layer.bias is not None:
            out["bias"] = _bias_grads(records)
        return {k: v for k, v in out.items() if getattr(layer, k).requires_grad}


@register_kernel
class Conv1dKernel(Conv2dKernel):
    module_type = nn.Conv1d
