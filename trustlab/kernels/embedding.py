"""nn.Embedding: per-sample norms with repeated indices (ghost: ``sum_{t,s: i_t = i_s} g_t·g_s``),
rows at ``padding_idx`` contributing nothing, and the clipped sum as one ``index_add``."""

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
