"""``DPMultiheadAttention``: ``nn.MultiheadAttention`` with its packed q/k/v projection split into
``nn.Linear`` layers, which the per-sample kernels cover; the same function, weights copied by
``from_module``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.errors import ConfigError
from trustlab.privacy.layers import _copy, unsupported_option


class DPMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate q/k/v/out ``nn.Linear`` projections."""

    # Attributes nn.TransformerEncoderLayer inspects before its fused inference path: with
    # ``_qkv_same_embed_dim`` False it falls back to calling this module's forward.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None,
                 batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention) -> "DPMultiheadAttention":
        if unsupported_option(mha) is not None:
            raise ConfigError("nn.MultiheadAttention with add_bias_kv or add_zero_attn has no "
                              "DP equivalent; build it without them")
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.out_proj.bias is not None,
                  mha.kdim, mha.vdim, mha.batch_first).to(mha.out_proj.weight)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
            for proj, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                _copy(proj.weight, w)
                if b is not None:
                    _copy(proj.bias, b)
            for name, param in mha.out_proj.named_parameters():
                _copy(getattr(new.out_proj, name), param)
        return new.train(mha.training)

    def to_module(self) -> nn.MultiheadAttention:
        """The equivalent ``nn.MultiheadAttention`` (weights copied), e.g. for checkpoints."""
        same = self.k_proj.in_features == self.v_proj.in_features == self.embed_dim
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, self.dropout,
                                    self.out_proj.bias is not None,
                                    kdim=self.k_proj.in_features, vdim=self.v_proj.in_features,
                                    batch_first=self.batch_first).to(self.out_proj.weight)
        projections = (self.q_proj, self.k_proj, self.v_proj)
        with torch.no_grad():
            if same:
                _copy(mha.in_proj_weight, *(p.weight for p in projections))
            else:
                for name, proj in zip("qkv", projections):
                    _copy(getattr(mha, f"{name}_proj_weight"), proj.weight)
            if mha.in_proj_bias is not None:
                _copy(mha.in_proj_bias, *(p.bias for p in projections))
            for name, param in self.out_proj.named_parameters():
                _copy(getattr(mha.out_proj, name), param)
        return mha.train(self.training)

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool,
              batch: int, tgt: int, src: int, like: Tensor) -> Tensor | None:
        """One additive float mask (B, H, L, S) from PyTorch's mask conventions."""
        def additive(m: Tensor) -> Tensor:
            return torch.zeros_like(m, dtype=like.dtype).masked_fill(m, float("-inf")) \
                if m.dtype == torch.bool else m.to(like.dtype)

        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=like.device).triu(1)
        mask = None
        if attn_mask is not None:
            mask = additive(attn_mask)
            mask = mask.view(batch, self.num_heads, tgt, src) if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            kpm = additive(key_padding_mask).view(batch, 1, 1, src)
            mask = kpm if mask is None else mask + kpm
        return mask

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, tgt, _ = query.shape
        src = key.shape[1]
        q = self.q_proj(query).view(batch, tgt, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(batch, src, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(batch, src, self.num_heads, self.head_dim).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, is_causal, batch, tgt, src, q)
        attention = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            attention = (scores if mask is None else scores + mask).softmax(-1)
            mixed = F.dropout(attention, self.dropout, self.training) @ v
        else:  # the fused kernel: no (B, H, L, S) attention map kept for backward
            mixed = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(mixed.transpose(1, 2).reshape(batch, tgt, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if attention is None:
            return out, None
        return out, attention.mean(1) if average_attn_weights else attention
