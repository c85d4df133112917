"""Time the fairness audit with 1000 bootstrap resamples on the Adult test split, and print the
ThresholdOptimizer acceptance numbers of the fully trained Adult MLP.

    .venv/bin/python benchmarks/fairness_bootstrap.py [--checkpoint DIR]

Without ``--checkpoint`` it trains ``train("mlp", "adult")`` with default settings first.
Run timing measurements under ``flock /tmp/trustlab-bench.lock``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from trustlab.audit.fairness.bootstrap import (confusion_counts, disparities,
                                               disparity_estimates)
from trustlab.audit.fairness.groups import build_groupings
from trustlab.audit.runner import AuditConfig, get_auditor, run_auditor
from trustlab.stats import bootstrap_ci
from trustlab.train.subject import Subject
from trustlab.train.trainer import train


def _subject(checkpoint: str | None) -> Subject:
    if checkpoint:
        return Subject.from_checkpoint(checkpoint)
    out = tempfile.mkdtemp(prefix="adult-mlp-")
    return Subject.from_trained(train("mlp", "adult", out=out, show_progress=False), "adult-mlp",
                                out)


def _audit(subject: Subject, params: dict) -> tuple[float, dict]:
    config = AuditConfig(params=params, tier="full", auditor="fairness")
    started = time.perf_counter()
    result = run_auditor(get_auditor("fairness"), subject, config)
    return time.perf_counter() - started, result.metrics


def _bootstrap_ratio(subject: Subject) -> None:
    """Count (multinomial) bootstrap vs row-index bootstrap of the same disparities."""
    test = subject.split("test")
    pred = subject.predict_proba(test.X).argmax(axis=1)
    g = build_groupings(test, ["sex"], min_group_size=30, intersections=False)[0][0]
    counts = confusion_counts(test.y, pred, g.codes, len(g.labels))
    started = time.perf_counter()
    fast = disparity_estimates(counts, n_resamples=1000)["equalized_odds_difference"].ci
    t_counts = time.perf_counter() - started
    cells = g.codes * 4 + 2 * test.y + pred

    def statistic(indices: np.ndarray) -> np.ndarray:
        per = np.stack([np.bincount(cells[i], minlength=4 * len(g.labels)) for i in indices])
        return disparities(per.reshape(len(indices), -1, 4))["equalized_odds_difference"]

    started = time.perf_counter()
    slow = bootstrap_ci(statistic, len(test), n_resamples=1000, strata=g.codes)
    t_rows = time.perf_counter() - started
    print(f"bootstrap 1000 resamples, sex EO difference: counts {t_counts:.3f} s CI "
          f"({fast[0]:.4f}, {fast[1]:.4f}); rows {t_rows:.2f} s CI ({slow[0]:.4f}, {slow[1]:.4f}); "
          f"speed-up x{t_rows / t_counts:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="an Adult MLP checkpoint (default: train one)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    subject = _subject(args.checkpoint)
    print(f"Adult MLP test accuracy {subject.meta['metrics']['test_accuracy']:.4f}, "
          f"test split n={len(subject.split('test'))}")
    _bootstrap_ratio(subject)
    seconds, metrics = _audit(subject, {"mitigation": ["threshold_optimizer"]})
    print(f"fairness audit, full tier, 1000 resamples, ThresholdOptimizer only: {seconds:.1f} s")
    for feature in ("sex", "race"):
        eo = metrics[f"fairness.{feature}.equalized_odds_difference"]
        dp = metrics[f"fairness.{feature}.demographic_parity_ratio"]
        to = f"fairness.{feature}.threshold_optimizer"
        print(f"  {feature}: EO difference {eo.value:.4f} (CI {eo.ci_low:.4f}-{eo.ci_high:.4f}), "
              f"DP ratio {dp.value:.4f} (CI {dp.ci_low:.4f}-{dp.ci_high:.4f}); "
              f"ThresholdOptimizer: EO difference -> {metrics[to + '.equalized_odds_difference'].value:.4f} "
              f"(cut {metrics[to + '.equalized_odds_reduction'].value:.1%}), accuracy "
              f"{metrics['fairness.accuracy'].value:.4f} -> {metrics[to + '.accuracy'].value:.4f} "
              f"(cost {100 * metrics[to + '.accuracy_cost'].value:.2f} points)")
    seconds, _ = _audit(subject, {})
    print(f"fairness audit, full tier defaults (+ fair fine-tuning): {seconds:.1f} s")


if __name__ == "__main__":
    main()
