"""Attention rollout (Abnar & Zuidema 2020) for the zoo's transformers.

Each layer's attention, averaged over heads and mixed with the identity for the residual
connection, is row-normalised; the product over layers says how much each input token flows
into the [CLS] token. Token relevance is then spread over the inputs the token reads (a ViT
patch's pixels, an FT-Transformer feature's columns), preserving its mass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trustlab.errors import ConfigError
from trustlab.explain.methods import ATTENTION, MethodInfo, register_method
from trustlab.train.zoo import FTTransformer, PatchTransformer, SelfAttention


def attention_maps(model: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    """The attention of every ``SelfAttention`` layer (batch, heads, tokens, tokens), in order."""
    layers = [m for m in model.modules() if isinstance(m, SelfAttention)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no SelfAttention layers: attention "
                          "rollout applies to the transformers (vit, ft_transformer)")
    previous = [layer.keep_attention for layer in layers]
    try:
        for layer in layers:
            layer.keep_attention = True
        with torch.no_grad():
            model(inputs)
        return [layer.last_attention for layer in layers]
    finally:
        for layer, keep in zip(layers, previous):
            layer.keep_attention = keep
            layer.last_attention = None


def rollout(maps: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Relevance of each non-[CLS] token for the [CLS] token, (batch, tokens − 1)."""
    joint = None
    for attention in maps:
        mixed = attention.mean(dim=1)
        eye = torch.eye(mixed.shape[-1], dtype=mixed.dtype).expand_as(mixed)
        mixed = residual * eye + (1 - residual) * mixed
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        joint = mixed if joint is None else mixed @ joint
    return joint[:, 0, 1:]


def tokens_to_inputs(model: nn.Module, relevance: torch.Tensor,
                     inputs: torch.Tensor) -> torch.Tensor:
    """Spread token relevance over the input entries each token reads (mass preserving)."""
    if isinstance(model, PatchTransformer):
        p = model.patch
        batch, channels, height, width = inputs.shape
        grid = relevance.view(batch, 1, height // p, width // p) / (p * p * channels)
        return grid.repeat_interleave(p, 2).repeat_interleave(p, 3).expand_as(inputs).clone()
    if isinstance(model, FTTransformer):
        out = torch.zeros_like(inputs)
        for token, group in enumerate(model.tokenizer.groups):
            out[:, group] = relevance[:, token:token + 1] / len(group)
        return out
    raise ConfigError(f"attention rollout does not know how tokens of {type(model).__name__} map "
                      "to inputs; it supports PatchTransformer (vit) and FTTransformer")


class AttentionRollout:
    """Captum-style wrapper: ``AttentionRollout(model).attribute(inputs)`` (target-free)."""

    def __init__(self, model: nn.Module, residual: float = 0.5) -> None:
        self.model, self.residual = model, residual

    def attribute(self, inputs: torch.Tensor, target: Any = None, **kwargs: Any) -> torch.Tensor:
        relevance = rollout(attention_maps(self.model, inputs), self.residual)
        return tokens_to_inputs(self.model, relevance, inputs)


register_method(MethodInfo("AttentionRollout", ATTENTION, lambda m, f: AttentionRollout(m),
                           lambda f: f.has_attention,
                           "attention rollout needs a transformer with SelfAttention layers",
                           uses_baselines=False))
