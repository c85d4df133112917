"""Plotly figures of the fairness audit: metric by group with CI bars, the accuracy–disparity
trade-off of the mitigations, and reliability curves by group."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from trustlab.audit.fairness.mitigation import Outcome


def metric_by_group(feature: str, table: pd.DataFrame, intervals: dict[str, dict],
                    metrics: tuple[str, ...]) -> go.Figure:
    """Grouped bars, one colour per metric, error bars from ``intervals[metric][group]``."""
    figure = go.Figure()
    for metric in metrics:
        values = table[metric]
        lows = [intervals[metric][g][0] for g in table.index]
        highs = [intervals[metric][g][1] for g in table.index]
        figure.add_bar(name=metric, x=list(table.index), y=list(values),
                       error_y={"type": "data", "symmetric": False,
                                "array": [h - v for h, v in zip(highs, values)],
                                "arrayminus": [v - lo for v, lo in zip(values, lows)]})
    figure.update_layout(title=f"{feature}: metrics by group (95% exact CIs)", barmode="group",
                         yaxis={"title": "rate", "range": [0, 1]}, xaxis={"title": feature})
    return figure


def tradeoff_curve(feature: str, outcomes: list[Outcome]) -> go.Figure:
    """Accuracy against equalized-odds difference, one trace per mitigation method."""
    figure = go.Figure()
    for method in dict.fromkeys(o.method for o in outcomes):
        points = [o for o in outcomes if o.method == method]
        figure.add_scatter(name=method, mode="markers+lines" if len(points) > 1 else "markers",
                           x=[o.equalized_odds_difference for o in points],
                           y=[o.accuracy for o in points], text=[o.setting for o in points],
                           marker={"size": 10})
    figure.update_layout(title=f"{feature}: accuracy vs equalized-odds difference (test split)",
                         xaxis={"title": "equalized-odds difference"},
                         yaxis={"title": "accuracy"})
    return figure


def calibration_by_group(feature: str, curves: dict[str, pd.DataFrame]) -> go.Figure:
    """Reliability curves (observed positive rate vs mean score per bin), one per group."""
    figure = go.Figure()
    figure.add_scatter(name="perfect calibration", x=[0, 1], y=[0, 1], mode="lines",
                       line={"dash": "dash", "color": "grey"})
    for group, curve in curves.items():
        figure.add_scatter(name=group, x=curve["mean_score"], y=curve["positive_rate"],
                           mode="markers+lines", text=[f"n={n}" for n in curve["count"]])
    figure.update_layout(title=f"{feature}: calibration by group",
                         xaxis={"title": "mean predicted P(positive)", "range": [0, 1]},
                         yaxis={"title": "observed positive rate", "range": [0, 1]})
    return figure
