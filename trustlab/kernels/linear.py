"""nn.Linear: per-sample squared norms (ghost or direct, chosen by cost) and clipped sums.

Activations ``a`` are (B, T, p) and output gradients ``g`` (B, T, d); a 2-D input is T = 1.
The per-sample weight gradient is ``G_i = g_i^T a_i`` (d, p), the bias gradient ``sum_t g_it``.

* ghost norm: ``||G_i||^2 = <a_i a_i^T, g_i g_i^T>``, cost 2BT^2(p+d), memory BT^2;
  for T = 1 it is ``||a_i||^2 ||g_i||^2``;
* direct: form ``G_i`` (cost 2BTpd, as B small GEMMs). Kept, the clipped sum is
  ``sum_i c_i G_i`` and the batched weight GEMM is skipped; otherwise they are computed tile
  by tile (Triton, on chip) or in batch chunks (torch), reduced to norms and dropped.

The clipped weight sum is one GEMM on rescaled output gradients (or activations, whichever is
smaller): ``(c * g)^T a``.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.kernels.clip import scale_accumulate, weighted_weight_sum
from trustlab.kernels.linear_rows import RowLayer
from trustlab.kernels.registry import (LayerKernel, Record, Sink, once, register_kernel,
                                       stack_sequences, use_triton)

GHOST, DIRECT, DIRECT_KEEP = "ghost", "direct", "direct_keep"
CHUNK_ELEMS = 1 << 24  # per-sample gradient elements per chunk on the non-kept direct path
KEEP_LIMIT_ELEMS = 1 << 26  # at most this many kept per-sample gradient elements per layer


DIRECT_PENALTY = 2  # a batch of small per-sample GEMMs runs at about half a big GEMM's speed


def choose_mode(batch: int, seq: int, p: int, d: int) -> str:
    """The cheaper per-sample norm method for a (B, T, p) -> (B, T, d) layer.

    Ghost costs 2BT^2(p+d) plus the clipped-sum GEMM 2BTpd; direct costs 2BTpd as B small
    GEMMs (counted ``DIRECT_PENALTY`` times: measured on CPU) and, when its per-sample
    gradients are kept, replaces the clipped-sum GEMM by a pass over them. Direct wins when
    ``DIRECT_PENALTY * pd <= T(p+d)``; it keeps the gradients unless they exceed
    ``KEEP_LIMIT_ELEMS``.
    """
    if seq == 1 or DIRECT_PENALTY * p * d > seq * (p + d):
        return GHOST
    return DIRECT_KEEP if batch * p * d <= KEEP_LIMIT_ELEMS else DIRECT


# --- torch reference path ----------------------------------------------------------------


def row_sq_norms(x: Tensor) -> Tensor:
    """``||x_i||^2`` over all but the first dim, as one reduction (no squared temporary), in
    float32 at least (a bf16 norm would be rounded to 3 digits)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.linalg.vector_norm(x.flatten(1), dim=1, dtype=dtype).square()


def gram(x: Tensor) -> Tensor:
    """(B, T, T) ``x_i x_i^T``, computed once per flush for data two layers share."""
    return once("gram", x, lambda x: torch.bmm(x, x.transpose(1, 2)))


def time_sum(g: Tensor) -> Tensor:
    """(B, d) ``sum_t g_it`` (the bias gradients), computed once per flush for shared data."""
    return once("time_sum", g, lambda g: g.sum(1))


def ghost_sq_norms(a: Tensor, g: Tensor) -> Tensor:
    """``||g_i^T a_i||_F^2`` for every sample without forming ``g_i^T a_i``."""
    if a.shape[1] == 1:
        return row_sq_norms(a) * row_sq_norms(g)
    return (gram(a) * gram(g)).sum((1, 2))


def per_sample_weight_grads(a: Tensor, g: Tensor) -> Tensor:
    """(B, d, p) per-sample weight gradients ``g_i^T a_i``."""
    return torch.bmm(g.transpose(1, 2), a)


def direct_sq_norms(a: Tensor, g: Tensor) -> Tensor:
    """``||g_i^T a_i||_F^2`` by materialising per-sample gradients a batch chunk at a time."""
    per_sample = a.shape[2] * g.shape[2]
    step = max(1, CHUNK_ELEMS // max(per_sample, 1))
    return torch.cat([per_sample_weight_grads(a[i:i + step], g[i:i + step]).square().sum((1, 2))
                      for i in range(0, a.shape[0], step)]) if a.shape[0] else a.new_zeros(0)


# --- Triton path (kernels defined on first use, so TRITON_INTERPRET set later still applies) -


@functools.cache
def _triton() -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit
    def ghost(a_ptr, g_ptr, out_ptr, T, P, D, sa, sg,
              BT: tl.constexpr, BK: tl.constexpr):
        b = tl.program_id(0)
        acc = tl.zeros((BT, BT), dtype=tl.float32)
        for t0 in range(0, T, BT):
            rt = t0 + tl.arange(0, BT)
            for s0 in range(0, T, BT):
                rs = s0 + tl.arange(0, BT)
                aa = tl.zeros((BT, BT), dtype=tl.float32)
                for k0 in range(0, P, BK):
                    rk = k0 + tl.arange(0, BK)
                    x = tl.load(a_ptr + b * sa + rt[:, None] * P + rk[None, :],
                                mask=(rt[:, None] < T) & (rk[None, :] < P), other=0.0)
                    y = tl.load(a_ptr + b * sa + rs[:, None] * P + rk[None, :],
                                mask=(rs[:, None] < T) & (rk[None, :] < P), other=0.0)
                    aa += tl.dot(x, tl.trans(y), input_precision="ieee")
                gg = tl.zeros((BT, BT), dtype=tl.float32)
                for k0 in range(0, D, BK):
                    rk = k0 + tl.arange(0, BK)
                    x = tl.load(g_ptr + b * sg + rt[:, None] * D + rk[None, :],
                                mask=(rt[:, None] < T) & (rk[None, :] < D), other=0.0)
                    y = tl.load(g_ptr + b * sg + rs[:, None] * D + rk[None, :],
                                mask=(rs[:, None] < T) & (rk[None, :] < D), other=0.0)
                    gg += tl.dot(x, tl.trans(y), input_precision="ieee")
                acc += aa * gg
        tl.store(out_ptr + b, tl.sum(tl.sum(acc, axis=1), axis=0))

    @triton.jit
    def direct(a_ptr, g_ptr, out_ptr, T, P, D, sa, sg,
               BT: tl.constexpr, BD: tl.constexpr, BP: tl.constexpr):
        b = tl.program_id(0)
        rd = tl.program_id(1) * BD + tl.arange(0, BD)
        rp = tl.program_id(2) * BP + tl.arange(0, BP)
        acc = tl.zeros((BD, BP), dtype=tl.float32)
        for t0 in range(0, T, BT):  # the per-sample tile G_i[rd, rp] stays on chip
            rt = t0 + tl.arange(0, BT)
            gt = tl.load(g_ptr + b * sg + rt[:, None] * D + rd[None, :],
                         mask=(rt[:, None] < T) & (rd[None, :] < D), other=0.0)
            at = tl.load(a_ptr + b * sa + rt[:, None] * P + rp[None, :],
                         mask=(rt[:, None] < T) & (rp[None, :] < P), other=0.0)
            acc += tl.dot(tl.trans(gt), at, input_precision="ieee")
        tl.atomic_add(out_ptr + b, tl.sum(tl.sum(acc * acc, axis=1), axis=0))

    return SimpleNamespace(ghost=ghost, direct=direct)


def triton_ghost_sq_norms(a: Tensor, g: Tensor) -> Tensor:
    """Triton ghost norm: one program per sample, T x T tiles of a a^T and g g^T."""
    a, g = a.float().contiguous(), g.float().contiguous()
    out = torch.empty(a.shape[0], dtype=torch.float32, device=a.device)
    if a.shape[0]:
        _triton().ghost[(a.shape[0],)](a, g, out, a.shape[1], a.shape[2], g.shape[2],
                                       a.stride(0), g.stride(0), BT=16, BK=32)
    return out


def triton_direct_sq_norms(a: Tensor, g: Tensor, block: int = 32) -> Tensor:
    """Triton direct norm: per-sample gradient tiles accumulated over T on chip, never stored."""
    import triton

    a, g = a.float().contiguous(), g.float().contiguous()
    out = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device)
    grid = (a.shape[0], triton.cdiv(g.shape[2], block), triton.cdiv(a.shape[2], block))
    if a.shape[0]:
        _triton().direct[grid](a, g, out, a.shape[1], a.shape[2], g.shape[2],
                               a.stride(0), g.stride(0), BT=16, BD=block, BP=block)
    return out


# --- dispatch ----------------------------------------------------------------------------


def sq_norms(a: Tensor, g: Tensor, mode: str) -> tuple[Tensor, Tensor | None]:
    """Per-sample squared weight-gradient norms by ``mode``; kept per-sample grads or None."""
    if mode == DIRECT_KEEP:
        grads = per_sample_weight_grads(a, g)
        return grads.square().sum((1, 2)), grads
    if use_triton(a):
        kernel = triton_ghost_sq_norms if mode == GHOST else triton_direct_sq_norms
        return kernel(a, g), None
    return (ghost_sq_norms(a, g) if mode == GHOST else direct_sq_norms(a, g)), None


def weight_sum(a: Tensor, g: Tensor, kept: Tensor | None, weights: Tensor) -> Tensor:
    """The clipped weight sum: ``sum_i w_i G_i`` from kept grads, else one GEMM."""
    if kept is not None:
        return scale_accumulate(kept.flatten(1), weights).view(kept.shape[1:])
    return weighted_weight_sum(a, g, weights)


class _LinearTap(torch.autograd.Function):
    """F.linear whose backward returns only the input gradient and records (a, g)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, sink: Sink) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.sink = sink
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None, None]:
        x, weight = ctx.saved_tensors
        ctx.sink(Record(x, g))
        grad_x = g @ weight.to(g.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


def linear_records(records: list[Record]) -> tuple[Tensor, Tensor]:
    """All calls of the layer as one (B, T, p), (B, T, d) pair."""
    return stack_sequences([(r.a, r.g) for r in records])


@register_kernel
class LinearKernel(LayerKernel):
    parameters = ("weight", "bias")
    module_type = nn.Linear

    def capture(self, layer: nn.Linear, sink: Sink, x: Tensor) -> Tensor:
        params = layer._parameters  # per call: skips nn.Module.__getattr__ (a microsecond a name)
        return _LinearTap.apply(x, params["weight"], params["bias"], sink)

    def sq_norms(self, layer: nn.Linear, records: list[Record]) -> tuple[Tensor, Any]:
        has_weight = layer.weight.requires_grad
        has_bias = layer.bias is not None and layer.bias.requires_grad
        kept = None
        rows = self.rows(layer, records)
        if rows is not None:  # ||G_i||^2 = ||a_i||^2 ||g_i||^2, the bias ||g_i||^2
            a, g = rows.a, rows.g
            g_sq = row_sq_norms(g)
            if has_weight and has_bias:
                total = torch.addcmul(g_sq, g_sq, row_sq_norms(a))
            else:
                total = g_sq * row_sq_norms(a) if has_weight else g_sq
            return total, (a, g, kept, g)
        a, g = linear_records(records)
        total, bias_grads = None, None
        if has_weight:
            mode = choose_mode(g.shape[0], g.shape[1], a.shape[2], g.shape[2])
            total, kept = sq_norms(a, g, mode)
        if has_bias:  # ||sum_t g_t||^2, not sum_t ||g_t||^2
            bias_grads = time_sum(g)
            bias_sq = row_sq_norms(bias_grads)
            total = bias_sq if total is None else total + bias_sq
        return total, (a, g, kept, bias_grads)

    def clipped_sum(self, layer: nn.Linear, records: list[Record], state: Any,
                    weights: Tensor) -> dict[str, Tensor]:
        a, g, kept, bias_grads = state
        weights = weights.to(g.dtype)
        out: dict[str, Tensor] = {}
        if layer.weight.requires_grad:
            out["weight"] = weight_sum(a, g, kept, weights)
        if layer.bias is not None and layer.bias.requires_grad:
            out["bias"] = weights @ bias_grads
        return out

    def rows(self, layer: nn.Linear, records: list[Record]) -> RowLayer | None:
        if len(records) != 1 or records[0].g.dim() != 2:
            return None
        weight, bias = layer._parameters["weight"], layer._parameters["bias"]
        return RowLayer(records[0].a, records[0].g, weight if weight.requires_grad else None,
                        bias if bias is not None and bias.requires_grad else None)

    def per_sample_grads(self, layer: nn.Linear, records: list[Record]) -> dict[str, Tensor]:
        a, g = linear_records(records)
        out = {"weight": per_sample_weight_grads(a, g)}
        if layer.bias is not None:
            out["bias"] = g.sum(1)
        return {k: v for k, v in out.items() if getattr(layer, k).requires_grad}
