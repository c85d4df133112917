"""nn.Conv1d / nn.Conv2d via unfold: each output position is a Linear on a receptive field.

Unfolded activations (B·G, L, C/G·k) and output gradients (B·G, L, out/G) per group G reuse
the Linear norms (ghost or direct by cost); per-sample norms sum over groups.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.kernels import linear
from trustlab.kernels.clip import scale_accumulate
from trustlab.kernels.registry import LayerKernel, Record, Sink, register_kernel, stack_sequences


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
        stride, padding, dilation, groups = ctx.args
        ctx.sink(Record(x, g, meta={"args": ctx.args, "kernel": weight.shape[2:]}))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                g, x, weight, None, stride, padding, dilation, False, [0] * len(stride),
                groups, [True, False, False])[0]
        return grad_x, None, None, None, None


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


def unfold_record(record: Record) -> tuple[Tensor, Tensor, int]:
    """(B·G, L, C/G·k) activations, (B·G, L, out/G) gradients, and G, for one call."""
    x, g = record.a, record.g
    stride, padding, dilation, groups = record.meta["args"]
    kernel = tuple(record.meta["kernel"])
    if x.dim() == 3:  # Conv1d as a 1 x k Conv2d
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        kernel, stride, padding, dilation = ((1, *kernel), (1, *stride), (0, *padding),
                                             (1, *dilation))
    batch = x.shape[0]
    a = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    a = a.view(batch, groups, -1, a.shape[-1]).transpose(2, 3).reshape(batch * groups,
                                                                         a.shape[-1], -1)
    g = g.reshape(batch, groups, g.shape[1] // groups, -1).transpose(2, 3)
    return a, g.reshape(batch * groups, g.shape[2], -1), groups


def conv_records(records: list[Record]) -> tuple[Tensor, Tensor, int]:
    parts = [unfold_record(r) for r in records]
    a, g = stack_sequences([(a, g) for a, g, _ in parts])
    return a, g, parts[0][2]


@register_kernel
class Conv2dKernel(LayerKernel):
    module_type = nn.Conv2d

    def capture(self, layer: nn.Module, sink: Sink, x: Tensor) -> Tensor:
        x, padding = _explicit_padding(layer, x)
        args = (tuple(layer.stride), padding, tuple(layer.dilation), layer.groups)
        return _ConvTap.apply(x, layer.weight, layer.bias, args, sink)

    def sq_norms(self, layer: nn.Module, records: list[Record]) -> tuple[Tensor, Any]:
        a, g, groups = conv_records(records)
        batch = a.shape[0] // groups
        total = torch.zeros(batch, dtype=g.dtype, device=g.device)
        kept = None
        if layer.weight.requires_grad:
            mode = linear.choose_mode(a.shape[0], a.shape[1], a.shape[2], g.shape[2])
            norms, kept = linear.sq_norms(a, g, mode)
            total += norms.view(batch, groups).sum(1)
        if layer.bias is not None and layer.bias.requires_grad:
            total += self._bias_grads(g, groups).square().sum(1)
        return total, (a, g, groups, kept)

    @staticmethod
    def _bias_grads(g: Tensor, groups: int) -> Tensor:
        return g.sum(1).view(g.shape[0] // groups, -1)

    def clipped_sum(self, layer: nn.Module, records: list[Record], state: Any,
                    weights: Tensor) -> dict[str, Tensor]:
        a, g, groups, kept = state
        out: dict[str, Tensor] = {}
        if layer.weight.requires_grad:
            if kept is not None:
                summed = scale_accumulate(kept.view(weights.shape[0], -1), weights)
            else:
                batch = weights.shape[0]
                gw = g.view(batch, groups, *g.shape[1:]) * weights[:, None, None, None]
                summed = torch.einsum("bgld,bglp->gdp", gw, a.view(batch, groups, *a.shape[1:]))
            out["weight"] = summed.reshape(layer.weight.shape)
        if layer.bias is not None and layer.bias.requires_grad:
            out["bias"] = weights @ self._bias_grads(g, groups)
        return out

    def per_sample_grads(self, layer: nn.Module, records: list[Record]) -> dict[str, Tensor]:
        a, g, groups = conv_records(records)
        batch = a.shape[0] // groups
        out = {"weight": linear.per_sample_weight_grads(a, g).reshape(batch, *layer.weight.shape)}
        if layer.bias is not None:
            out["bias"] = self._bias_grads(g, groups)
        return {k: v for k, v in out.items() if getattr(layer, k).requires_grad}


@register_kernel
class Conv1dKernel(Conv2dKernel):
    module_type = nn.Conv1d
