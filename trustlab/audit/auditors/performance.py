"""The training-metrics auditor: utility on every split, with confidence intervals."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from trustlab.audit.report import AuditResult
from trustlab.audit.runner import AuditConfig, register_auditor
from trustlab.stats import bootstrap_ci, clopper_pearson
from trustlab.train.subject import Subject


@register_auditor
class PerformanceAuditor:
    """Accuracy per split (Clopper–Pearson CIs) and the train–test gap; for an autoencoder,
    anomaly AUROC on the test split (bootstrap CI)."""

    name = "performance"

    def applies_to(self, subject: Subject) -> bool:
        return True

    def run(self, subject: Subject, config: AuditConfig) -> AuditResult:
        result = AuditResult(self.name)
        if subject.task == "reconstruction":
            self._anomaly(subject, config, result)
            return result
        accuracy = {}
        for split in ("train", "holdout", "test"):
            data = subject.split(split)
            correct = int((subject.logits(data.X).argmax(axis=1) == data.y).sum())
            accuracy[split] = correct / len(data)
            result.add_metric(f"{split}_accuracy", accuracy[split],
                              clopper_pearson(correct, len(data)))
        gap = accuracy["train"] - accuracy["test"]
        result.add_metric("generalization_gap", gap)
        if gap > 0.05:
            result.add_finding("medium", f"train accuracy exceeds test accuracy by {gap:.3f}: the "
                               "model overfits, which raises membership-inference risk",
                               f"{self.name}.generalization_gap")
        return result

    def _anomaly(self, subject: Subject, config: AuditConfig, result: AuditResult) -> None:
        data = subject.split("test")
        errors = ((subject.logits(data.X) - data.X) ** 2).mean(axis=1)
        auroc = roc_auc_score(data.y, errors)

        def resampled_auroc(indices: np.ndarray) -> np.ndarray:
            return np.array([roc_auc_score(data.y[i], errors[i])
                             if 0 < data.y[i].sum() < len(i) else np.nan for i in indices])

        n_resamples = 200 if config.tier == "smoke" else 1000
        result.add_metric("test_anomaly_auroc", auroc,
                          bootstrap_ci(resampled_auroc, len(data), n_resamples=n_resamples,
                                       seed=config.seed))
        result.add_metric("test_reconstruction_mse", float(errors[data.y == 0].mean()))
        result.add_finding("info", f"anomaly score = reconstruction error; the autoencoder "
                           f"trained on the negative class ({subject.data.classes[0]}) only, so "
                           f"AUROC measures how well it flags {subject.data.classes[1]} rows")
