"""Synthetic report stores for the dashboard's tests, benchmark and screenshots.

The reports are written through ``ReportStore.save`` exactly as the audit runner writes them,
with metrics, findings and artifacts in the shapes the auditors record (plotly JSON plots, PNG
image grids, JSON tables). The values are made up; the shapes are the point. Not imported by the
app (the store module imports torch).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from trustlab.audit.report import Artifact, AuditResult, Report
from trustlab.audit.store import ReportStore

MODELS = (("adult-mlp", "mlp", "adult"), ("adult-ft_transformer", "ft_transformer", "adult"),
          ("compas-mlp", "mlp", "compas"), ("german-mlp", "mlp", "german"),
          ("digits-cnn", "cnn", "digits"), ("digits-vit", "vit", "digits"),
          ("digits-lstm", "lstm", "digits"), ("digits-gru", "gru", "digits"),
          ("adult-autoencoder", "autoencoder", "adult"))  # the demo's reference zoo
DP_FACTS = {"noise_multiplier": 0.93, "sample_rate": 0.031, "steps": 161, "max_grad_norm": 1.0,
            "epsilon": 8.0, "delta": 1e-5, "accountant": "rdp", "secure_mode": False,
            "target_epsilon": 8.0, "mechanism": "dp-sgd", "sampling": "poisson"}
HOSTILE_NAME = '<script>alert("x")</script> **bold** [link](https://example.com) :red[x] $x$'
GROUPS = {"sex": ("Female", "Male"), "race": ("Black", "White", "Other")}
EPSILONS = (0.0, 0.01, 0.02, 0.05, 0.1)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def make_sample_store(root: str | Path, n_runs: int = 6, *, artifacts: bool = True,
                      cards: bool = True, hostile: bool = False, seed: int = 0) -> list[str]:
    """Write ``n_runs`` synthetic runs into the store at ``root``; returns their run ids.

    Run 0 has every auditor; the others rotate through subsets (one has performance only, one
    has an errored auditor). ``hostile`` names run 0 with Markdown/HTML that must be escaped.
    """
    store = ReportStore(root)
    rng = np.random.default_rng(seed)
    start = datetime(2025, 1, 1, 9, 0, 0)
    run_ids = []
    for i in range(n_runs):
        name, arch, dataset = MODELS[i % len(MODELS)]
        name = HOSTILE_NAME if hostile and i == 0 else name
        run_id = f"{start:%Y%m%d}-{i:05d}-{MODELS[i % len(MODELS)][0]}"
        staging = store.staging_dir(run_id) if artifacts else None
        report = Report(run_id=run_id, created=(start + timedelta(hours=i)).isoformat(),
                        subject={"name": name, "arch": arch, "dataset": dataset,
                                 "task": "classification",
                                 "privacy": DP_FACTS if i % 3 == 0 else None},
                        provenance={"seed": seed, "trustlab": "0.1.0"},
                        results=_results(i, rng, staging))
        store.save(report)
        if cards and artifacts and len(report.results) > 1:
            _write_card(store.run_dir(run_id), name)
        run_ids.append(run_id)
    return run_ids


def corrupt_report(root: str | Path, run_id: str) -> None:
    """Overwrite a run's report.json with truncated JSON (its index rows stay)."""
    path = Path(root) / "runs" / run_id / "report.json"
    path.write_text(path.read_text()[: 200])


def _results(i: int, rng: np.random.Generator, staging: Path | None) -> list[AuditResult]:
    makers = [_performance, _fairness, _explain, _robustness, _privacy]
    if i % 6 == 3:
        makers = [_performance]  # a run where the other auditors did not apply
    results = [make(rng, staging) for make in makers]
    if i % 6 == 4:
        results[2].status, results[2].error = "errored", "RuntimeError: out of memory (synthetic)"
    if i % 6 == 5:
        results[1].status = "failed"
    return results


def _ci(value: float, width: float) -> tuple[float, float]:
    return value - width, value + width


def _performance(rng: np.random.Generator, staging: Path | None) -> AuditResult:
    result = AuditResult("performance")
    accuracy = {split: float(rng.uniform(0.78, 0.9)) for split in ("train", "holdout", "test")}
    for split, value in accuracy.items():
        result.add_metric(f"{split}_accuracy", value, _ci(value, 0.01))
    result.add_metric("generalization_gap", accuracy["train"] - accuracy["test"])
    return result


def _fairness(rng: np.random.Generator, staging: Path | None) -> AuditResult:
    result = AuditResult("fairness")
    groups = {**GROUPS, "sex_x_race": tuple(f"{s}_x_{r}" for s in GROUPS["sex"]
                                             for r in GROUPS["race"])}
    for feature, names in groups.items():
        rates = rng.uniform(0.1, 0.4, len(names))
        for group, rate in zip(names, rates):
            for metric, value in (("selection_rate", rate), ("true_positive_rate", rate + 0.4),
                                  ("accuracy", 0.8 + rate / 10)):
                result.add_metric(f"{feature}.by_group.{group}.{metric}", value,
                                  _ci(value, 0.03))
        gap = float(rates.max() - rates.min())
        result.add_metric(f"{feature}.demographic_parity_difference", gap, _ci(gap, 0.02))
        result.add_metric(f"{feature}.equalized_odds_difference", gap * 1.2, _ci(gap * 1.2, 0.03))
    for method, (acc, gap) in {"threshold_optimizer": (0.83, 0.05),
                               "exponentiated_gradient.bound_0p01": (0.82, 0.03)}.items():
        result.add_metric(f"sex.{method}.accuracy", acc)
        result.add_metric(f"sex.{method}.equalized_odds_difference", gap)
    result.add_finding("medium", "equalized odds difference for sex exceeds 0.1",
                       "fairness.sex.equalized_odds_difference")
    if staging is not None:
        fig = go.Figure(go.Scatter(x=[0.18, 0.05, 0.03], y=[0.85, 0.83, 0.82],
                                   text=["original", "threshold_optimizer",
                                         "exponentiated_gradient"],
                                   mode="markers+text"))
        fig.update_layout(title="mitigation trade-off", xaxis_title="equalized odds difference",
                          yaxis_title="accuracy")
        result.artifacts.append(_plot(staging, "sex_tradeoff.json", fig,
                                      "accuracy vs disparity per mitigation"))
    return result


def _explain(rng: np.random.Generator, staging: Path | None) -> AuditResult:
    result = AuditResult("explain")
    for feature in ("age", "education_num", "hours_per_week", "capital_gain", "sex_Male"):
        result.add_metric(f"integrated_gradients.importance.{feature}", float(rng.uniform(0, 1)))
    result.add_metric("sanity.model_randomization_spearman", 0.12, (0.05, 0.2))
    result.add_metric("sanity.data_randomization_spearman", 0.08, (0.01, 0.15))
    result.add_metric("faithfulness.deletion_auc", 0.31, (0.28, 0.34))
    result.add_metric("faithfulness.infidelity", 0.02, (0.015, 0.025))
    result.add_finding("info", "attributions pass the model-randomization sanity check")
    if staging is not None:
        grid = (rng.random((8 * 4, 8 * 8)) * 255).astype(np.uint8)
        image = Image.fromarray(grid).resize((512, 256), Image.NEAREST)
        image.save(staging / "heatmap_grid.png")
        result.artifacts.append(Artifact("heatmap_grid", "heatmap_grid.png", "image",
                                         "integrated-gradients heatmaps, 4 × 8 test images"))
    return result


def _robustness(rng: np.random.Generator, staging: Path | None) -> AuditResult:
    result = AuditResult("robustness")
    for attack, decay in (("fgsm", 3.0), ("pgd", 5.0)):
        for eps in EPSILONS:
            value = 0.85 * float(np.exp(-decay * eps * 10))
            result.add_metric(f"{attack}.eps_{eps}.accuracy", value, _ci(value, 0.02))
    for radius in RADII:
        value = 0.8 * (1 - radius) ** 2
        result.add_metric(f"certified.radius_{radius}.accuracy", value, _ci(value, 0.02))
    result.add_metric("backdoor.attack_success_rate", 0.93, (0.9, 0.95))
    result.add_metric("backdoor.clean_accuracy", 0.84, (0.82, 0.86))
    result.add_finding("high", "a 1% poisoning rate implants a backdoor with 93% success")
    return result


def _privacy(rng: np.random.Generator, staging: Path | None) -> AuditResult:
    result = AuditResult("privacy")
    for attack, auc in (("loss_threshold", 0.56), ("lira", 0.61), ("rmia", 0.63)):
        result.add_metric(f"{attack}.auc", auc, _ci(auc, 0.01))
        for fpr, tpr in ((0.001, auc / 100), (0.01, auc / 20)):
            result.add_metric(f"{attack}.tpr_at_{fpr}_fpr", tpr, (tpr / 2, tpr * 1.6))
    result.add_metric("claimed_epsilon", 8.0)
    result.add_metric("empirical_epsilon", 1.3, (0.9, 1.3))
    result.add_metric("attribute_inference.sex.advantage", 0.07, (0.03, 0.11))
    if staging is not None:
        fpr = np.logspace(-4, 0, 60)
        fig = go.Figure([go.Scatter(x=fpr, y=np.clip(fpr ** (1 / k), 0, 1), name=name)
                         for name, k in (("loss_threshold", 1.1), ("lira", 1.4), ("rmia", 1.6))])
        fig.add_scatter(x=fpr, y=fpr, name="chance", line={"dash": "dot"})
        fig.update_layout(title="membership-inference ROC", xaxis_type="log", yaxis_type="log",
                          xaxis_title="FPR", yaxis_title="TPR")
        result.artifacts.append(_plot(staging, "mia_roc.json", fig, "ROC of each attack"))
        rows = [{"row": int(r), "score": float(s)}
                for r, s in zip(rng.integers(0, 30000, 10), np.sort(rng.random(10))[::-1])]
        (staging / "most_exposed.json").write_text(json.dumps(rows))
        result.artifacts.append(Artifact("most_exposed", "most_exposed.json", "table",
                                         "training rows most exposed to LiRA"))
        grid = (rng.random((16, 64)) * 255).astype(np.uint8)
        Image.fromarray(grid).resize((512, 128), Image.NEAREST).save(staging / "inversion.png")
        result.artifacts.append(Artifact("inversion_grid", "inversion.png", "image",
                                         "model-inversion reconstructions, one per class"))
    return result


def _plot(staging: Path, filename: str, fig: go.Figure, description: str) -> Artifact:
    fig.write_json(staging / filename)
    return Artifact(filename.rsplit(".", 1)[0], filename, "plot", description)


def _write_card(folder: Path, name: str) -> None:
    body = (f"---\nmodel_name: {json.dumps(name)}\nlicense: apache-2.0\n---\n\n"
            "# Model card\n\n## Intended use\n\nResearch on auditing; not for decisions about "
            "people.\n\n## Evaluation\n\n| metric | value |\n|---|---|\n| test accuracy | 0.85 |\n")
    (folder / "card.md").write_text(body)
    (folder / "card.html").write_text("<html><body><h1>Model card</h1></body></html>")
