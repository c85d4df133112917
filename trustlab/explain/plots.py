"""Pictures of explanations: heatmap grids (PIL), feature bars and deletion/insertion curves (plotly)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from PIL import Image, ImageDraw

from trustlab.explain.faithfulness import Curves
from trustlab.explain.importance import Importance


def _diverging(values: np.ndarray) -> np.ndarray:
    """Signed map → RGB: red for positive, blue for negative, white at zero (per-map scale)."""
    scale = np.abs(values).max() or 1.0
    v = np.clip(values / scale, -1, 1)
    red = np.where(v < 0, 1 + v, 1.0)
    blue = np.where(v > 0, 1 - v, 1.0)
    green = 1 - np.abs(v)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def heatmap_grid(images: np.ndarray, attributions: dict[str, np.ndarray], *,
                 zoom: int = 8, label_height: int = 12) -> Image.Image:
    """One row per example: the input (grey) then each method's signed heatmap.

    ``images`` is (N, C, H, W) in [0, 1]; each attribution array has the same shape (channels are
    summed).
    """
    n, _, height, width = images.shape
    cell_h, cell_w = height * zoom, width * zoom
    columns = ["input", *attributions]
    grid = Image.new("RGB", (len(columns) * (cell_w + 2), label_height + n * (cell_h + 2)),
                     "white")
    draw = ImageDraw.Draw(grid)
    for col, name in enumerate(columns):
        draw.text((col * (cell_w + 2) + 2, 0), name[:11], fill="black")
    for row in range(n):
        grey = (np.clip(images[row].mean(axis=0), 0, 1) * 255).astype(np.uint8)
        cells = [np.repeat(grey[..., None], 3, axis=-1)]
        cells += [_diverging(a[row].sum(axis=0)) for a in attributions.values()]
        for col, cell in enumerate(cells):
            tile = Image.fromarray(cell).resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(tile, (col * (cell_w + 2), label_height + row * (cell_h + 2)))
    return grid


def importance_bars(importance: Importance, title: str, top: int = 20) -> go.Figure:
    """Global importance: mean |attribution| per feature with bootstrap CI error bars."""
    ranked = importance.ranked()[:top][::-1]
    names, means, lows, highs = (list(c) for c in zip(*ranked))
    fig = go.Figure(go.Bar(x=means, y=names, orientation="h",
                           error_x={"type": "data", "symmetric": False,
                                    "array": np.subtract(highs, means),
                                    "arrayminus": np.subtract(means, lows)}))
    fig.update_layout(title=title, xaxis_title="mean |attribution| (95% CI)",
                      height=max(300, 22 * len(names)))
    return fig


def local_bars(folded: np.ndarray, names: list[str], labels: list[str], title: str) -> go.Figure:
    """Signed per-feature attributions of a few examples (one-hot columns already folded)."""
    fig = go.Figure([go.Bar(x=row, y=names, orientation="h", name=label)
                     for row, label in zip(folded, labels)])
    fig.update_layout(title=title, barmode="group", xaxis_title="attribution (signed)",
                      height=max(300, 18 * len(names) * max(1, len(labels)) // 2))
    return fig


def faithfulness_curves(curves: dict[str, Curves], title: str) -> go.Figure:
    """Mean deletion and insertion curves per method (random baseline included if given)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("deletion (lower is better)",
                                                        "insertion (higher is better)"))
    for name, c in curves.items():
        for col, values, auc in ((1, c.deletion, c.deletion_auc), (2, c.insertion,
                                                                   c.insertion_auc)):
            fig.add_trace(go.Scatter(x=c.fractions, y=values.mean(axis=0), mode="lines",
                                     name=f"{name} (AUC {auc.mean():.3f})", legendgroup=name,
                                     showlegend=True), row=1, col=col)
    fig.update_xaxes(title_text="fraction of features")
    fig.update_yaxes(title_text="target probability", range=[0, 1])
    fig.update_layout(title=title)
    return fig
