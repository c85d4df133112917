"""``trustlab demo``: train the reference zoo on the bundled data, audit every model, store it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from trustlab.audit.cards import write_cards
from trustlab.audit.report import Report
from trustlab.audit.runner import audit
from trustlab.audit.store import ReportStore
from trustlab.train.subject import Subject
from trustlab.privacy.train import train_private
from trustlab.train.trainer import TrainedModel, TrainSettings, train


@dataclass(frozen=True)
class ZooEntry:
    name: str
    arch: str
    dataset: str
    dp_epsilon: float | None = None  # train with DP-SGD at this ε (δ = 1e-5)

    def train(self, settings: TrainSettings, out: Path | None, show_progress: bool) -> TrainedModel:
        if self.dp_epsilon is None:
            return train(self.arch, self.dataset, settings=settings, out=out,
                         show_progress=show_progress)
        return train_private(self.arch, self.dataset, target_epsilon=self.dp_epsilon,
                             settings=settings, out=out, show_progress=show_progress)


REFERENCE_ZOO = (
    ZooEntry("adult-mlp", "mlp", "adult"),
    ZooEntry("adult-mlp-dp", "mlp", "adult", dp_epsilon=3.0),
    ZooEntry("adult-ft_transformer", "ft_transformer", "adult"),
    ZooEntry("adult-autoencoder", "autoencoder", "adult"),
    ZooEntry("compas-mlp", "mlp", "compas"),
    ZooEntry("german-mlp", "mlp", "german"),
    ZooEntry("digits-cnn", "cnn", "digits"),
    ZooEntry("digits-lstm", "lstm", "digits"),
    ZooEntry("digits-gru", "gru", "digits"),
    ZooEntry("digits-vit", "vit", "digits"),
)
QUICK_ZOO = (REFERENCE_ZOO[0], REFERENCE_ZOO[6])  # one tabular, one image model
QUICK_EPOCHS = 2


def run_demo(store_dir: str | Path = "store", *, quick: bool = False, seed: int = 0,
             auditors: list[str] | None = None, show_progress: bool = True,
             console: Console | None = None) -> list[Report]:
    """Train each zoo model, audit it with every applicable auditor, record one report and a
    model card (``card.md``, ``card.html`` in the run's folder) each.

    ``quick`` trains two models for two epochs (what the tests use).
    """
    console = console or Console()
    store = ReportStore(store_dir)
    reports = []
    for entry in QUICK_ZOO if quick else REFERENCE_ZOO:
        started = time.perf_counter()
        private = f" with DP-SGD at ε={entry.dp_epsilon}" if entry.dp_epsilon else ""
        console.print(f"[bold]{entry.name}[/]: training {entry.arch} on {entry.dataset}{private}")
        settings = TrainSettings(seed=seed, epochs=QUICK_EPOCHS if quick else None)
        checkpoint = store.root / "models" / entry.name
        trained = entry.train(settings, checkpoint, show_progress)
        subject = Subject.from_trained(trained, entry.name, checkpoint)
        report = audit(subject, auditors=auditors, tier="smoke", seed=seed, store=store,
                       show_progress=show_progress)
        reports.append(report)
        write_cards(report, store)
        console.print(f"  {report.status} in {time.perf_counter() - started:.1f} s "
                      f"(run {report.run_id})")
    console.print(summary_table(reports))
    console.print(f"store: {store.root.resolve()} ({len(store.list_runs())} runs indexed)")
    return reports


def headline_metric(report: Report) -> tuple[str, float | None]:
    """The one number that says how good the model is: test accuracy or anomaly AUROC."""
    metrics = report.metrics()
    for name in ("performance.test_accuracy", "performance.test_anomaly_auroc"):
        if name in metrics:
            return name.split(".", 1)[1], metrics[name].value
    return "-", None


def summary_table(reports: list[Report]) -> Table:
    table = Table(title="trustlab demo")
    for column in ("model", "dataset", "metric", "value", "auditors", "status"):
        table.add_column(column)
    for report in reports:
        name, value = headline_metric(report)
        statuses = ", ".join(f"{r.auditor}:{r.status}" for r in report.results)
        table.add_row(report.subject["name"], report.subject["dataset"], name,
                      "-" if value is None else f"{value:.4f}", statuses, report.status)
    return table
