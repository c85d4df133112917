"""nn.Conv1d / Conv2d / Conv3d: per-sample gradients without an im2col copy of the input.

Two ways to form every sample's weight gradient at once, chosen by the layer's shape:

* one input channel per group (a grayscale first layer, a depthwise conv), on CPU: one
  *forward* convolution of the input whose kernels are the output gradients,
  ``G_i[o, 0, k] = sum_t g_i[o, t] x_i[stride*t + dilation*k]`` (measured on CPU: ~2x faster
  than the grouped backward below, ~1.7x the batched weight gradient; not yet measured on a
  GPU, where such large kernels may have no fast cuDNN algorithm, so CUDA uses the folds);
* otherwise the batch folded into the channel groups (input (1, b·C, ...), output grads
  (1, b·out, ...), b·G groups), so that ATen's weight-gradient kernel returns every sample's
  gradient (b, out, C/G, k...) at the FLOP count of the batched weight gradient; folds of
  ``FOLD_CHUNK`` samples, whose results stay in cache (larger folds run slower on CPU).

When they are small they are formed in the backward pass and recorded instead of the input
and output gradient, which are then freed at once (the clipped sum is ``sum_i c_i G_i``);
otherwise the record keeps (x, g), the per-sample gradients are reduced to norms chunk by chunk
(on CUDA, for a Conv1d/Conv2d called once per pass: by a Triton implicit-GEMM kernel whose
per-sample gradient tiles stay on chip, the input patches gathered by index arithmetic, no
im2col copy) and the clipped sum is one weight-gradient call on rescaled output gradients.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.kernels.clip import scale_accumulate
from trustlab.kernels.linear import CHUNK_ELEMS, KEEP_LIMIT_ELEMS, row_sq_norms
from trustlab.kernels.registry import LayerKernel, Record, Sink, register_kernel, use_triton


_CONVS = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}  # by the input's rank (batched)


class _ConvTap(torch.autograd.Function):
    """F.conv{1,2,3}d whose backward returns only the input gradient and records (x, g)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, args: tuple,
                sink: Sink) -> Tensor:
        stride, padding, dilation, groups = args
        ctx.save_for_backward(x, weight)
        ctx.args, ctx.sink = args, sink
        return _CONVS[x.dim()](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        if x.dtype != g.dtype:  # autocast ran the forward in g's dtype
            x, weight = x.to(g.dtype), weight.to(g.dtype)
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


FOLD_CHUNK = 32  # samples folded into one grouped call: 16-32 ran fastest on CPU (B=512)


def _weight_grads_as_forward_conv(x: Tensor, g: Tensor, weight_shape: torch.Size,
                                  args: tuple) -> Tensor:
    """Per-sample weight gradients (b, numel) of a conv with one input channel per group,
    as one grouped forward convolution whose kernels are the output gradients (stride and
    dilation swap roles)."""
    stride, padding, dilation, groups = args
    b = len(x)
    out = _CONVS[x.dim()](x.reshape(1, -1, *x.shape[2:]), g.reshape(-1, 1, *g.shape[2:]),
                          None, stride=dilation, padding=padding, dilation=stride,
                          groups=b * groups)
    crop = tuple(slice(0, k) for k in weight_shape[2:])  # extra rows the input had left over
    return out[(..., *crop)].reshape(b, -1)


def _weight_grads(record: Record, rows: slice) -> Tensor:
    """Per-sample weight gradients (b, numel) of the samples ``rows`` of one call."""
    if record.meta.get("per_sample"):
        return record.a[rows]
    x, g = record.a[rows], record.g[rows]
    shape, args = record.meta["weight_shape"], record.meta["args"]
    if shape[1] == 1 and not x.is_cuda:  # measured on CPU only; CUDA keeps the folds
        return _weight_grads_as_forward_conv(x, g, shape, args)
    out = x.new_empty(len(x), shape.numel())
    for i in range(0, len(x), FOLD_CHUNK):  # each fold's result copied while still in cache
        xs, gs = x[i:i + FOLD_CHUNK], g[i:i + FOLD_CHUNK]
        out[i:i + len(xs)] = _conv_backward(gs, xs, shape, args, len(xs)).view(len(xs), -1)
    return out


def _row_slices(records: list[Record]) -> list[slice]:
    """Slices of the batch whose per-sample weight gradients take at most ``CHUNK_ELEMS``."""
    batch, numel = records[0].batch_size, records[0].meta["weight_shape"].numel()
    step = max(1, CHUNK_ELEMS // max(numel, 1))
    return [slice(i, i + step) for i in range(0, batch, step)]


def per_sample_weight_grads(records: list[Record], rows: slice = slice(None)) -> Tensor:
    """Per-sample weight gradients (b, numel) of the samples ``rows``, summed over the
    layer's calls."""
    first, *rest = records
    return sum((_weight_grads(r, rows) for r in rest), _weight_grads(first, rows))


def _per_sample_record(record: Record, weight: bool) -> Record:
    """The call's per-sample gradients as the record: ``a`` the flat (B, numel) weight
    gradients (empty when the weight is frozen), ``g`` the (B, out) bias gradients; their
    squared norms (``meta["sq_norms"]``) taken while they are still in cache."""
    x, g = record.a, record.g
    grads = _weight_grads(record, slice(None)) if weight and len(x) else g.new_zeros(len(x), 0)
    return Record(grads, g.flatten(2).sum(2),
                  meta={**record.meta, "per_sample": True, "sq_norms": row_sq_norms(grads)})


@functools.cache
def _triton() -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit
    def direct(x_ptr, g_ptr, out_ptr, H, W, OH, OW, KH, KW, CG, OG,
               sh, sw, ph, pw, dh, dw, sxb, sxc, sxh, sxw, sgb, sgc,
               BO: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
        # program (sample b, a block of one group's output channels, a block of the flattened
        # (input channel, kh, kw) index): the tile G_b[ro, rk] = sum_t g_b[ro, t] U_b[t, rk],
        # with U_b the implicit im2col of x_b, accumulated over output positions t
        b = tl.program_id(0)
        blocks = tl.cdiv(OG, BO)
        group = tl.program_id(1) // blocks
        ro = (tl.program_id(1) % blocks) * BO + tl.arange(0, BO)
        rk = tl.program_id(2) * BK + tl.arange(0, BK)
        c, kh, kw = rk // (KH * KW), (rk // KW) % KH, rk % KW
        T = OH * OW
        acc = tl.zeros((BO, BK), dtype=tl.float32)
        for t0 in range(0, T, BT):
            rt = t0 + tl.arange(0, BT)
            g = tl.load(g_ptr + b * sgb + (group * OG + ro[:, None]) * sgc + rt[None, :],
                        mask=(ro[:, None] < OG) & (rt[None, :] < T), other=0.0)
            ih = (rt // OW)[:, None] * sh - ph + kh[None, :] * dh
            iw = (rt % OW)[:, None] * sw - pw + kw[None, :] * dw
            inside = ((rt[:, None] < T) & (rk[None, :] < CG * KH * KW)
                      & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
            u = tl.load(x_ptr + b * sxb + (group * CG + c[None, :]) * sxc + ih * sxh + iw * sxw,
                        mask=inside, other=0.0)
            acc += tl.dot(g, u, input_precision="ieee")
        tl.atomic_add(out_ptr + b, tl.sum(tl.sum(acc * acc, axis=1), axis=0))

    return SimpleNamespace(direct=direct)


def triton_conv_sq_norms(x: Tensor, g: Tensor, weight_shape: torch.Size, args: tuple,
                         blocks: tuple[int, int, int] = (16, 32, 32)) -> Tensor:
    """Per-sample squared norms of one call's conv weight gradients (Triton): each program
    accumulates one (output channels x patch) tile of a sample's gradient on chip, over the
    output positions, and adds its squared sum to the sample's norm; nothing per-sample is
    stored. ``blocks``: output channels, positions, patch elements per tile."""
    import triton

    stride, padding, dilation, groups = args
    if x.dim() == 3:  # Conv1d as a Conv2d of height 1
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
        weight_shape = (*weight_shape[:2], 1, *weight_shape[2:])
    x, g = x.float(), g.float().contiguous()
    out_channels, in_per_group, kh, kw = weight_shape
    out_per_group = out_channels // groups
    out = torch.zeros(len(x), dtype=torch.float32, device=x.device)
    bo, bt, bk = blocks
    grid = (len(x), groups * triton.cdiv(out_per_group, bo),
            triton.cdiv(in_per_group * kh * kw, bk))
    if len(x):
        _triton().direct[grid](x, g, out, x.shape[2], x.shape[3], g.shape[2], g.shape[3], kh, kw,
                               in_per_group, out_per_group, *stride, *padding, *dilation,
                               *x.stride(), g.stride(0), g.stride(1), BO=bo, BT=bt, BK=bk)
    return out


def _weight_sq_norms(records: list[Record]) -> Tensor:
    """Per-sample squared weight-gradient norms of records that keep (x, g): the Triton kernel
    for one call on CUDA, else per-sample gradients a slice of samples at a time, dropped once
    reduced (a layer called several times needs the norm of the summed gradients)."""
    if len(records) == 1 and records[0].g.dim() <= 4 and use_triton(records[0].g):
        r = records[0]
        return triton_conv_sq_norms(r.a, r.g, r.meta["weight_shape"], r.meta["args"])
    return torch.cat([row_sq_norms(per_sample_weight_grads(records, rows))
                      for rows in _row_slices(records)])


def _bias_grads(records: list[Record]) -> Tensor:
    return sum(r.g if r.meta.get("per_sample") else r.g.flatten(2).sum(2) for r in records)


@register_kernel
class Conv2dKernel(LayerKernel):
    parameters = ("weight", "bias")
    module_type = nn.Conv2d
    function_methods = ("forward", "_conv_forward")  # padding modes live in _conv_forward

    def capture(self, layer: nn.Module, sink: Sink, x: Tensor) -> Tensor:
        x, padding = _explicit_padding(layer, x)
        args = (tuple(layer.stride), padding, tuple(layer.dilation), layer.groups)
        return _ConvTap.apply(x, layer.weight, layer.bias, args, sink)

    def sq_norms(self, layer: nn.Module, records: list[Record]) -> tuple[Tensor, Any]:
        batch = records[0].batch_size
        total = records[0].g.new_zeros(batch)
        kept = None
        if layer.weight.requires_grad and batch:
            if all(r.meta.get("per_sample") for r in records):
                kept = per_sample_weight_grads(records)
                total += records[0].meta["sq_norms"] if len(records) == 1 else row_sq_norms(kept)
            else:
                total += _weight_sq_norms(records)
        if layer.bias is not None and layer.bias.requires_grad:
            total += row_sq_norms(_bias_grads(records))
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
        out = {"weight": per_sample_weight_grads(records).view(-1, *layer.weight.shape)}
        if layer.bias is not None:
            out["bias"] = _bias_grads(records)
        return {k: v for k, v in out.items() if getattr(layer, k).requires_grad}


@register_kernel
class Conv1dKernel(Conv2dKernel):
    module_type = nn.Conv1d


@register_kernel
class Conv3dKernel(Conv2dKernel):
    module_type = nn.Conv3d
