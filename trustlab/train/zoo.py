"""The reference model zoo: every architecture DP-compatible (GroupNorm/LayerNorm, no BatchNorm).

Each architecture registers a builder with ``@register_arch``; a model is rebuilt from
``(arch, InputSpec, config)`` stored in its checkpoint's meta.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from trustlab.errors import ConfigError


@dataclass
class InputSpec:
    """What a model needs to know about its data: input shape, classes, one-hot groups."""

    shape: list[int]
    n_classes: int
    feature_groups: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ArchInfo:
    name: str
    modality: str  # "tabular" or "image"
    task: str  # "classification" or "reconstruction"
    builder: Callable[[InputSpec, dict], nn.Module]
    defaults: dict  # architecture hyper-parameters
    training: dict  # default training settings (epochs, lr, batch_size, weight_decay, patience)


_ARCHS: dict[str, ArchInfo] = {}


def register_arch(name: str, *, modality: str, task: str = "classification",
                  defaults: dict, training: dict) -> Callable:
    """Register ``builder(spec, config) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable) -> Callable:
        _ARCHS[name] = ArchInfo(name, modality, task, builder, defaults, training)
        return builder

    return wrap


def available_archs() -> list[str]:
    return sorted(_ARCHS)


def arch_info(name: str) -> ArchInfo:
    if name not in _ARCHS:
        raise ConfigError(f"unknown arch {name!r}; available: {', '.join(available_archs())}")
    return _ARCHS[name]


def build_model(arch: str, spec: InputSpec, config: dict | None = None) -> nn.Module:
    """Build ``arch`` for ``spec``; ``config`` overrides the architecture defaults."""
    info = arch_info(arch)
    unknown = set(config or {}) - set(info.defaults)
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} for arch {arch!r}; "
                          f"allowed: {sorted(info.defaults)}")
    return info.builder(spec, {**info.defaults, **(config or {})})


def full_config(arch: str, config: dict | None = None) -> dict:
    """The defaults of ``arch`` merged with ``config``: what the checkpoint records."""
    return {**arch_info(arch).defaults, **(config or {})}


# --- building blocks -------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention from plain Linear projections (per-sample-gradient friendly).

    The attention map of the last forward pass is kept in ``last_attention`` (batch, heads,
    tokens, tokens) when ``keep_attention`` is set, for attention rollout.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (dim // self.heads) ** -0.5
        attention = scores.softmax(dim=-1)
        if self.keep_attention:
            self.last_attention = attention.detach()
        mixed = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.out(mixed)


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class TokenTransformer(nn.Module):
    """A [CLS] token prepended to ``tokens``, positional embeddings, blocks, a linear head."""

    def __init__(self, n_tokens: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 dropout: float, n_classes: int) -> None:
        super().__init__()
        self.cls = nn.Embedding(1, dim)
        self.position = nn.Embedding(n_tokens + 1, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio, dropout)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, _ = tokens.shape
        index = torch.zeros(batch, 1, dtype=torch.long, device=tokens.device)
        x = torch.cat([self.cls(index), tokens], dim=1)
        positions = torch.arange(count + 1, device=tokens.device).expand(batch, -1)
        x = self.blocks(x + self.position(positions))
        return self.head(self.norm(x[:, 0]))


# --- tabular ---------------------------------------------------------------------------------


def _mlp_layers(sizes: list[int], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Dropout(dropout)]
    return layers + [nn.Linear(sizes[-2], sizes[-1])]


@register_arch("mlp", modality="tabular", defaults={"hidden": [256, 256], "dropout": 0.1},
               training={"epochs": 20, "lr": 1e-3, "batch_size": 256, "weight_decay": 1e-4, "patience": 10})
def _build_mlp(spec: InputSpec, cfg: dict) -> nn.Module:
    return nn.Sequential(*_mlp_layers([spec.shape[0], *cfg["hidden"], spec.n_classes],
                                      cfg["dropout"]))


class FeatureTokenizer(nn.Module):
    """FT-Transformer tokenizer: one token per original feature, a Linear over its columns.

    For a one-hot group the Linear is an embedding lookup; for a numeric column it is the
    FT-Transformer's ``x * w + b``.
    """

    def __init__(self, groups: list[list[int]], dim: int) -> None:
        super().__init__()
        self.groups = [list(g) for g in groups]
        for i, group in enumerate(self.groups):
            self.register_buffer(f"index_{i}", torch.tensor(group), persistent=False)
        self.projections = nn.ModuleList(nn.Linear(len(g), dim) for g in self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = [proj(x.index_select(1, getattr(self, f"index_{i}")))
                  for i, proj in enumerate(self.projections)]
        return torch.stack(tokens, dim=1)


class FTTransformer(nn.Module):
    def __init__(self, spec: InputSpec, cfg: dict) -> None:
        super().__init__()
        groups = spec.feature_groups or [[i] for i in range(spec.shape[0])]
        self.tokenizer = FeatureTokenizer(groups, cfg["dim"])
        self.encoder = TokenTransformer(len(groups), cfg["dim"], cfg["depth"], cfg["heads"],
                                        cfg["mlp_ratio"], cfg["dropout"], spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.tokenizer(x))


@register_arch("ft_transformer", modality="tabular",
               defaults={"dim": 32, "depth": 2, "heads": 4, "mlp_ratio": 2.0, "dropout": 0.1},
               training={"epochs": 15, "lr": 1e-3, "batch_size": 256, "weight_decay": 1e-4, "patience": 10})
def _build_ft_transformer(spec: InputSpec, cfg: dict) -> nn.Module:
    return FTTransformer(spec, cfg)


class TabularAutoencoder(nn.Module):
    """Reconstructs its input; ``anomaly_score`` is the per-row mean squared error."""

    def __init__(self, n_features: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*_mlp_layers([n_features, *hidden], dropout))
        self.decoder = nn.Sequential(*_mlp_layers([hidden[-1], *reversed(hidden[:-1]),
                                                   n_features], dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.encoder(x)))

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        return (self(x) - x).pow(2).mean(dim=1)


@register_arch("autoencoder", modality="tabular", task="reconstruction",
               defaults={"hidden": [64, 16], "dropout": 0.0},
               training={"epochs": 20, "lr": 1e-3, "batch_size": 256, "weight_decay": 0.0, "patience": 10})
def _build_autoencoder(spec: InputSpec, cfg: dict) -> nn.Module:
    return TabularAutoencoder(spec.shape[0], cfg["hidden"], cfg["dropout"])


# --- images ----------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class ResNetCNN(nn.Module):
    """A small ResNet: stem, residual stages that halve the resolution, pooling, linear head."""

    def __init__(self, spec: InputSpec, cfg: dict) -> None:
        super().__init__()
        widths, groups = cfg["widths"], cfg["groups"]
        layers: list[nn.Module] = [nn.Conv2d(spec.shape[0], widths[0], 3, padding=1),
                                   nn.GroupNorm(groups, widths[0]), nn.ReLU()]
        for i, width in enumerate(widths):
            if i:
                layers += [nn.Conv2d(widths[i - 1], width, 3, stride=2, padding=1),
                           nn.GroupNorm(groups, width), nn.ReLU()]
            layers.append(ResidualBlock(width, groups))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@register_arch("cnn", modality="image", defaults={"widths": [32, 64], "groups": 8},
               training={"epochs": 30, "lr": 2e-3, "batch_size": 64, "weight_decay": 1e-4, "patience": 10})
def _build_cnn(spec: InputSpec, cfg: dict) -> nn.Module:
    return ResNetCNN(spec, cfg)


class RowSequenceClassifier(nn.Module):
    """Reads an image row by row with an LSTM or GRU; classifies from the last hidden state."""

    def __init__(self, spec: InputSpec, cfg: dict, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(spec.shape[-1], cfg["hidden"], num_layers=cfg["layers"], batch_first=True)
        self.head = nn.Linear(cfg["hidden"], spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x.flatten(1, -2))  # (B, 1, H, W) -> (B, H, W): H steps of W pixels
        return self.head(output[:, -1])


RNN_DEFAULTS = {"hidden": 128, "layers": 1}
RNN_TRAINING = {"epochs": 60, "lr": 5e-3, "batch_size": 64, "weight_decay": 1e-4,
                "patience": 20}


@register_arch("lstm", modality="image", defaults=RNN_DEFAULTS, training=RNN_TRAINING)
def _build_lstm(spec: InputSpec, cfg: dict) -> nn.Module:
    return RowSequenceClassifier(spec, cfg, nn.LSTM)


@register_arch("gru", modality="image", defaults=RNN_DEFAULTS, training=RNN_TRAINING)
def _build_gru(spec: InputSpec, cfg: dict) -> nn.Module:
    return RowSequenceClassifier(spec, cfg, nn.GRU)


class PatchTransformer(nn.Module):
    """ViT-style encoder: non-overlapping patches, linear patch embedding, transformer blocks."""

    def __init__(self, spec: InputSpec, cfg: dict) -> None:
        super().__init__()
        channels, height, width = spec.shape
        self.patch = cfg["patch"]
        if height % self.patch or width % self.patch:
            raise ConfigError(f"patch {self.patch} does not divide the image size {height}x{width}")
        n_tokens = (height // self.patch) * (width // self.patch)
        self.embed = nn.Linear(channels * self.patch ** 2, cfg["dim"])
        self.encoder = TokenTransformer(n_tokens, cfg["dim"], cfg["depth"], cfg["heads"],
                                        cfg["mlp_ratio"], cfg["dropout"], spec.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        return self.encoder(self.embed(patches))


@register_arch("vit", modality="image",
               defaults={"patch": 2, "dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2.0,
                         "dropout": 0.1},
               training={"epochs": 80, "lr": 2e-3, "batch_size": 64, "weight_decay": 5e-2, "patience": 20})
def _build_vit(spec: InputSpec, cfg: dict) -> nn.Module:
    return PatchTransformer(spec, cfg)
