"""nn.Embedding: per-sample norms with repeated indices (ghost: ``sum_{t,s: i_t = i_s} g_t·g_s``),
rows at ``padding_idx`` contributing nothing, and the clipped sum as one ``index_add``.

nn.EmbeddingBag (sum and mean) is recorded as an embedding over each bag's entries: entry j of
bag i has the output gradient ``w_ij g_i`` (``w`` is 1, ``1 / |bag|`` or the per-sample weight;
0 at ``padding_idx``), so the same norms and sums serve it."""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.kernels.registry import LayerKernel, Record, Sink, register_kernel, use_triton


class _EmbeddingTap(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, index: Tensor, weight: Tensor, padding_idx: int | None,
                sink: Sink) -> Tensor:
        ctx.save_for_backward(index)
        ctx.padding_idx, ctx.sink = padding_idx, sink
        return F.embedding(index, weight, padding_idx)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, None, None, None]:
        (index,) = ctx.saved_tensors
        ctx.sink(Record(index, g, meta={"padding_idx": ctx.padding_idx}))
        return None, None, None, None


class _EmbeddingBagTap(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, index: Tensor, offsets: Tensor | None, weight: Tensor,
                per_sample_weights: Tensor | None, options: tuple, sink: Sink) -> Tensor:
        mode, padding_idx, include_last_offset = options
        ctx.save_for_backward(index, offsets, weight, per_sample_weights)
        ctx.options, ctx.sink = options, sink
        return F.embedding_bag(index, weight, offsets, mode=mode,
                               per_sample_weights=per_sample_weights,
                               include_last_offset=include_last_offset, padding_idx=padding_idx)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        index, offsets, weight, per_sample_weights = ctx.saved_tensors
        idx, w, bag_of = bag_entries(index, offsets, per_sample_weights, *ctx.options,
                                     bags=g.shape[0], dtype=g.dtype)
        ctx.sink(Record(idx, w.unsqueeze(-1) * g.unsqueeze(1), meta={"padding_idx": None}))
        grad_weights = None
        if ctx.needs_input_grad[3]:  # d out_i / d w_ij = weight[index_ij]
            grad_weights = (weight[index] * g[bag_of]).sum(-1)
            if ctx.options[1] is not None:
                grad_weights = grad_weights * (index != ctx.options[1])
        return None, None, None, grad_weights, None, None


def bag_entries(index: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None,
                mode: str, padding_idx: int | None, include_last_offset: bool, bags: int,
                dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Each bag's entries as (bags, L) indices and weights (0 where a bag is shorter or the
    index is ``padding_idx``), and the bag of each entry of ``index`` (its shape)."""
    given = (torch.ones(index.shape, dtype=dtype, device=index.device)
             if per_sample_weights is None else per_sample_weights.to(dtype))
    if index.dim() == 2:
        idx, w = index, given
        bag_of = torch.arange(bags, device=index.device)[:, None].expand_as(index)
    else:
        starts = offsets[:bags]
        ends = torch.cat([starts[1:], offsets.new_full((1,), len(index))]) \
            if not include_last_offset else offsets[1:bags + 1]
        bag_of = torch.repeat_interleave(torch.arange(bags, device=index.device), ends - starts,
                                         output_size=len(index))
        position = torch.arange(len(index), device=index.device) - starts[bag_of]
        width = int((ends - starts).max()) if bags else 0
        idx = index.new_zeros(bags, width).index_put_((bag_of, position), index)
        w = given.new_zeros(bags, width).index_put_((bag_of, position), given)
    if padding_idx is not None:
        w = w * (idx != padding_idx)
    if mode == "mean":
        w = w / (w != 0).sum(1, keepdim=True).clamp(min=1)
    return idx, w, bag_of


def embedding_records(records: list[Record]) -> tuple[Tensor, Tensor]:
    """Indices (B, T) and output gradients (B, T, d) of all calls; padding rows zeroed."""
    idx = torch.cat([r.a.reshape(r.a.shape[0], -1) for r in records], dim=1)
    g = torch.cat([r.g.reshape(r.g.shape[0], -1, r.g.shape[-1]) for r in records], dim=1)
    pad = records[0].meta["padding_idx"]
    if pad is not None:
        g = g * (idx != pad).unsqueeze(-1).to(g.dtype)
    return idx, g


def embedding_sq_norms(idx: Tensor, g: Tensor) -> Tensor:
    """``||G_i||^2 = sum_{t,s} [i_t = i_s] g_t·g_s`` (rows hit twice add up before squaring)."""
    if idx.shape[1] == 1:
        return g.square().sum((1, 2))
    same = (idx[:, :, None] == idx[:, None, :]).to(g.dtype)
    return (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))


@functools.cache
def _triton() -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit
    def ghost(idx_ptr, g_ptr, out_ptr, T, D, BT: tl.constexpr, BD: tl.constexpr):
        b = tl.program_id(0)
        acc = tl.zeros((BT, BT), dtype=tl.float32)
        for t0 in range(0, T, BT):
            rt = t0 + tl.arange(0, BT)
            it = tl.load(idx_ptr + b * T + rt, mask=rt < T, other=-1)
            for s0 in range(0, T, BT):
                rs = s0 + tl.arange(0, BT)
                is_ = tl.load(idx_ptr + b * T + rs, mask=rs < T, other=-2)
                gg = tl.zeros((BT, BT), dtype=tl.float32)
                for k0 in range(0, D, BD):
                    rk = k0 + tl.arange(0, BD)
                    x = tl.load(g_ptr + (b * T + rt[:, None]) * D + rk[None, :],
                                mask=(rt[:, None] < T) & (rk[None, :] < D), other=0.0)
                    y = tl.load(g_ptr + (b * T + rs[:, None]) * D + rk[None, :],
                                mask=(rs[:, None] < T) & (rk[None, :] < D), other=0.0)
                    gg += tl.dot(x, tl.trans(y), input_precision="ieee")
                acc += tl.where(it[:, None] == is_[None, :], gg, 0.0)
        tl.store(out_ptr + b, tl.sum(tl.sum(acc, axis=1), axis=0))

    return SimpleNamespace(ghost=ghost)


def triton_embedding_sq_norms(idx: Tensor, g: Tensor) -> Tensor:
    idx, g = idx.contiguous(), g.float().contiguous()
    out = torch.empty(idx.shape[0], dtype=torch.float32, device=g.device)
    if idx.shape[0]:
        _triton().ghost[(idx.shape[0],)](idx, g, out, idx.shape[1], g.shape[2], BT=16, BD=32)
    return out


@register_kernel
class EmbeddingKernel(LayerKernel):
    parameters = ("weight",)
    module_type = nn.Embedding

    def capture(self, layer: nn.Embedding, sink: Sink, index: Tensor) -> Tensor:
        return _EmbeddingTap.apply(index, layer.weight, layer.padding_idx, sink)

    def sq_norms(self, layer: nn.Embedding, records: list[Record]) -> tuple[Tensor, Any]:
        idx, g = embedding_records(records)
        norms = (triton_embedding_sq_norms if use_triton(g) else embedding_sq_norms)(idx, g)
        return norms, (idx, g)

    def clipped_sum(self, layer: nn.Embedding, records: list[Record], state: Any,
                    weights: Tensor) -> dict[str, Tensor]:
        idx, g = state
        gw = (g * weights[:, None, None]).reshape(-1, g.shape[-1])
        return {"weight": torch.zeros_like(layer.weight).index_add_(0, idx.reshape(-1),
                                                                    gw.to(layer.weight.dtype))}

    def per_sample_grads(self, layer: nn.Embedding, records: list[Record]) -> dict[str, Tensor]:
        idx, g = embedding_records(records)
        out = g.new_zeros(idx.shape[0], *layer.weight.shape)
        out.scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, g.shape[-1]), g)
        return {"weight": out}


@register_kernel
class EmbeddingBagKernel(EmbeddingKernel):
    module_type = nn.EmbeddingBag

    def flat_input(self, layer: nn.EmbeddingBag, input: Tensor, offsets: Tensor | None = None,
                   per_sample_weights: Tensor | None = None) -> tuple[int, int] | None:
        """Flat indices with offsets: ``(entries, bags)``."""
        if input.dim() != 1 or offsets is None:
            return None
        return input.shape[0], offsets.shape[0] - int(layer.include_last_offset)

    def capture(self, layer: nn.EmbeddingBag, sink: Sink, input: Tensor,
                offsets: Tensor | None = None,
                per_sample_weights: Tensor | None = None) -> Tensor:
        options = (layer.mode, layer.padding_idx, layer.include_last_offset)
        return _EmbeddingBagTap.apply(input, offsets, layer.weight, per_sample_weights, options,
                                      sink)
