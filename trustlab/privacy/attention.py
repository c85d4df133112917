"""``DPMultiheadAttention``: ``nn.MultiheadAttention`` with its packed q/k/v projection split into
``nn.Linear`` layers, which the per-sample kernels cover; the same function, weights copied by
``from_module``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.errors import ConfigError
from trustlab.privacy.layers import _copy


class DPMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate q/k/v/out ``nn.Linear`` projections: the same
    arguments, attributes, initialisation, inputs (batched or not, every mask kind) and outputs,
    except ``add_bias_kv``/``add_zero_attn``, which it refuses."""

    # Attributes nn.TransformerEncoderLayer inspects before its fused inference path: with
    # ``_qkv_same_embed_dim`` False it falls back to calling this module's forward.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None
    # What nn.MultiheadAttention holds for add_bias_kv=False, add_zero_attn=False.
    bias_k = bias_v = None
    add_zero_attn = False

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ConfigError(f"embed_dim and num_heads must be > 0, got embed_dim={embed_dim} "
                              f"and num_heads={num_heads}")
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if add_bias_kv or add_zero_attn:
            raise ConfigError("add_bias_kv and add_zero_attn have no DP equivalent (their extra "
                              "key/value entries are not nn.Linear outputs); build the attention "
                              "without them")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        factory = {"bias": bias, "device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation: Xavier-uniform q/k/v weights (over the
        packed (3E, E) ``in_proj_weight`` when kdim == vdim == embed_dim), zero biases, the
        default ``nn.Linear`` weight for ``out_proj``."""
        packed = self.kdim == self.vdim == self.embed_dim
        fan_out = 3 * self.embed_dim if packed else self.embed_dim
        with torch.no_grad():
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                bound = math.sqrt(6 / (proj.in_features + fan_out))
                proj.weight.uniform_(-bound, bound)
            for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
                if proj.bias is not None:
                    proj.bias.zero_()

    # nn.MultiheadAttention's separate projection weights (it has them when kdim or vdim differ
    # from embed_dim, and ``_qkv_same_embed_dim`` here says they always are separate).
    @property
    def q_proj_weight(self) -> nn.Parameter:
        return self.q_proj.weight

    @property
    def k_proj_weight(self) -> nn.Parameter:
        return self.k_proj.weight

    @property
    def v_proj_weight(self) -> nn.Parameter:
        return self.v_proj.weight

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention) -> "DPMultiheadAttention":
        weight = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.out_proj.bias is not None,
                  add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn,
                  kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first,
                  device=weight.device, dtype=weight.dtype)
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
        weight = self.out_proj.weight
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, self.dropout,
                                    self.out_proj.bias is not None, kdim=self.kdim,
                                    vdim=self.vdim, batch_first=self.batch_first,
                                    device=weight.device, dtype=weight.dtype)
        projections = (self.q_proj, self.k_proj, self.v_proj)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                _copy(mha.in_proj_weight, *(p.weight for p in projections))
            else:
                for name, proj in zip("qkv", projections):
                    _copy(getattr(mha, f"{name}_proj_weight"), proj.weight)
            if mha.in_proj_bias is not None:
                _copy(mha.in_proj_bias, *(p.bias for p in projections))
            for name, param in self.out_proj.named_parameters():
                _copy(getattr(mha.out_proj, name), param)
        return mha.train(self.training)

    def _check(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
               attn_mask: Tensor | None, is_causal: bool) -> None:
        """A ConfigError naming the first argument that ``nn.MultiheadAttention`` refuses."""
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ConfigError("query, key and value must be all 2-D (unbatched) or all 3-D "
                              f"(batched), got {query.dim()}-D, {key.dim()}-D and "
                              f"{value.dim()}-D")
        batched = query.dim() == 3
        seq = 1 if batched and self.batch_first else 0
        batch = query.shape[1 - seq] if batched else 1
        tgt, src = query.shape[seq], key.shape[seq]

        def layout(length: int, features: int) -> tuple[int, ...]:
            if not batched:
                return length, features
            return (batch, length, features) if self.batch_first else (length, batch, features)

        expected = [("query", query, [layout(tgt, self.embed_dim)]),
                    ("key", key, [layout(src, self.kdim)]),
                    ("value", value, [layout(src, self.vdim)]),
                    ("key_padding_mask", key_padding_mask, [(batch, src) if batched else (src,)]),
                    ("attn_mask", attn_mask, [(tgt, src), (batch * self.num_heads, tgt, src)])]
        for name, tensor, shapes in expected:
            if tensor is not None and tuple(tensor.shape) not in shapes:
                where = f" (batch_first={self.batch_first})" if batched else " (unbatched)"
                raise ConfigError(f"{name} has shape {tuple(tensor.shape)}, expected "
                                  + " or ".join(map(str, shapes)) + where)
        for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
                raise ConfigError(f"{name} must be a bool or floating-point tensor, got "
                                  f"{mask.dtype}")
        if is_causal and attn_mask is None:
            raise ConfigError("is_causal=True is a hint that attn_mask is causal and needs that "
                              "attn_mask, e.g. nn.Transformer.generate_square_subsequent_mask(L)")

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int,
              tgt: int, src: int, like: Tensor) -> Tensor | None:
        """One additive float mask, broadcastable to (B, H, L, S), from PyTorch's conventions."""
        def additive(m: Tensor) -> Tensor:
            return torch.zeros_like(m, dtype=like.dtype).masked_fill(m, float("-inf")) \
                if m.dtype == torch.bool else m.to(like.dtype)

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
        """``nn.MultiheadAttention.forward``: 2-D inputs are one unbatched sample; the returned
        weights are the ones that mixed the values (after dropout). ``is_causal`` is a hint that
        ``attn_mask`` is causal: the mask is required, and the fused kernel applies its own
        causal mask instead when no weights or padding mask are asked for."""
        self._check(query, key, value, key_padding_mask, attn_mask, is_causal)
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, tgt, _ = query.shape
        src = key.shape[1]
        q, k, v = (proj(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
                   for proj, x in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
        causal = is_causal and key_padding_mask is None and not need_weights
        mask = None if causal else self._mask(attn_mask, key_padding_mask, batch, tgt, src, q)
        dropout = self.dropout if self.training else 0.0
        attention = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            attention = F.dropout((scores if mask is None else scores + mask).softmax(-1), dropout)
            mixed = attention @ v
            if average_attn_weights:
                attention = attention.mean(1)
        else:  # the fused kernel: no (B, H, L, S) attention map kept for backward
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                   is_causal=causal)
        out = self.out_proj(mixed.transpose(1, 2).reshape(batch, tgt, self.embed_dim))
        if not batched:
            return out.squeeze(0), None if attention is None else attention.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), attention
