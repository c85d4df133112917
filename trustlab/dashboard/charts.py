"""Plotly figures built from stored aggregates (frames of value + CI), never from raw data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

HEIGHT = 360


def _errors(frame: pd.DataFrame) -> dict:
    """Asymmetric error bars from ci_low/ci_high; bars are omitted where there is no CI."""
    upper = (frame["ci_high"] - frame["value"]).clip(lower=0)
    lower = (frame["value"] - frame["ci_low"]).clip(lower=0)
    if upper.isna().all() and lower.isna().all():
        return {}
    return {"error_y": {"type": "data", "symmetric": False, "array": upper.fillna(0).to_numpy(),
                        "arrayminus": lower.fillna(0).to_numpy()}}


def _layout(fig: go.Figure, title: str, height: int = HEIGHT, **axes) -> go.Figure:
    fig.update_layout(title=title, height=height, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      legend={"orientation": "h", "y": -0.2}, **axes)
    return fig


def bars_with_ci(frame: pd.DataFrame, x: str, title: str, color: str | None = None,
                 log_y: bool = False) -> go.Figure:
    """Grouped bars of ``value`` over ``x`` (one trace per ``color`` value) with CI error bars."""
    fig = go.Figure()
    groups = frame.groupby(color, sort=False) if color else [("", frame)]
    for key, part in groups:
        fig.add_bar(x=part[x].astype(str), y=part["value"], name=str(key), **_errors(part))
    fig.update_layout(barmode="group", showlegend=bool(color))
    return _layout(fig, title, **({"yaxis_type": "log"} if log_y else {}))


def curves_with_ci(frame: pd.DataFrame, x_title: str, title: str) -> go.Figure:
    """One line per ``curve`` over ``x`` with CI error bars (robust accuracy vs ε and the like)."""
    fig = go.Figure()
    for curve, part in frame.sort_values("x").groupby("curve", sort=False):
        fig.add_scatter(x=part["x"], y=part["value"], mode="lines+markers", name=str(curve),
                        **_errors(part))
    return _layout(fig, title, xaxis_title=x_title, yaxis_title="value")


def trend(frame: pd.DataFrame, metric: str) -> go.Figure:
    """A metric over run creation time, one line per model name, CI as error bars."""
    fig = go.Figure()
    for model, part in frame.groupby("model", sort=False):
        fig.add_scatter(x=part["created"], y=part["value"], mode="lines+markers",
                        name=str(model), text=part["run_id"], **_errors(part))
    return _layout(fig, f"{metric} across runs", xaxis_title="run created", yaxis_title=metric)


def epsilon_bars(frame: pd.DataFrame) -> go.Figure:
    """Claimed ε next to the empirical lower bound (with its interval)."""
    fig = go.Figure()
    fig.add_bar(x=frame["kind"], y=frame["value"], **_errors(frame),
                marker_color=["#1f77b4" if "claimed" in k else "#d62728" for k in frame["kind"]])
    return _layout(fig, "claimed vs empirical ε", yaxis_title="ε")


def horizontal_bars(labels: list[str], values: np.ndarray, title: str) -> go.Figure:
    """Sorted horizontal bars (feature importance)."""
    order = np.argsort(values)
    fig = go.Figure(go.Bar(x=np.asarray(values)[order], y=np.asarray(labels)[order],
                           orientation="h"))
    return _layout(fig, title)


def delta_bars(frame: pd.DataFrame) -> go.Figure:
    """Per-metric ``delta`` (B − A), coloured by sign."""
    fig = go.Figure(go.Bar(x=frame["delta"], y=frame["name"], orientation="h",
                           marker_color=np.where(frame["delta"] >= 0, "#2ca02c", "#d62728")))
    return _layout(fig, "B − A", height=max(HEIGHT, 22 * len(frame)))
