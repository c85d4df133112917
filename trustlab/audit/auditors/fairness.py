"""The fairness auditor: disaggregated metrics, disparities with bootstrap CIs, intersections,
data-level bias, mitigation before/after, weak slices and plots. See docs/fairness.md."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trustlab.audit.fairness.bootstrap import confusion_counts, disparity_estimates
from trustlab.audit.fairness.groups import Grouping, build_groupings, safe_label
from trustlab.audit.fairness.metrics import group_table, reliability_curve
from trustlab.audit.fairness.mitigation import (Outcome, exponentiated_gradient, fair_finetune,
                                                outcome, threshold_optimizer)
from trustlab.audit.fairness.plots import calibration_by_group, metric_by_group, tradeoff_curve
from trustlab.audit.fairness.slices import find_weak_slices
from trustlab.audit.report import AuditResult
from trustlab.audit.runner import AuditConfig, register_auditor
from trustlab.errors import ConfigError, DataError
from trustlab.stats import clopper_pearson
from trustlab.train.progress import progress_bar
from trustlab.train.data import Split
from trustlab.train.subject import Subject
from trustlab.train.trainer import predict

MITIGATIONS = ("threshold_optimizer", "exponentiated_gradient", "fair_finetune")
DEFAULTS = {
    "sensitive_features": None,  # default: the data set's declared sensitive features
    "split": "test",
    "min_group_size": 30,
    "intersections": True,
    "n_resamples": {"smoke": 200, "full": 1000},
    "confidence": 0.95,
    # exponentiated_gradient refits a logistic regression ~15 times per feature: opt-in
    "mitigation": {"smoke": ["threshold_optimizer"], "full": ["threshold_optimizer",
                                                              "fair_finetune"]},
    # the split(s) ThresholdOptimizer is fit on; default every split but the audited one, so
    # that small groups have positives to fit (Adult's val split: 1 positive in 2 race groups)
    "mitigation_split": None,
    "finetune_weights": [2.0, 10.0],
    "finetune_max_rows": 8000,
    "eg_bounds": [0.02],
    "eg_max_rows": 4000,
    "slices": True,
    "max_equalized_odds_difference": 0.1,
    "min_demographic_parity_ratio": 0.8,
}
# numerator and denominator cells (tn, fp, fn, tp) of each rate, for exact per-group CIs
RATE_CELLS = {"base_rate": ((2, 3), (0, 1, 2, 3)), "selection_rate": ((1, 3), (0, 1, 2, 3)),
              "accuracy": ((0, 3), (0, 1, 2, 3)), "true_positive_rate": ((3,), (2, 3)),
              "false_positive_rate": ((1,), (0, 1)), "false_negative_rate": ((2,), (2, 3)),
              "precision": ((3,), (1, 3))}
PLOTTED = ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")


def resolve_params(params: dict, tier: str) -> dict:
    """Defaults filled in, tier-dependent ones picked; unknown names raise ConfigError."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown fairness parameter(s) {sorted(unknown)}; "
                          f"allowed: {', '.join(sorted(DEFAULTS))}")
    merged = {k: (v[tier] if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    merged.update(params)
    bad = set(merged["mitigation"]) - set(MITIGATIONS)
    if bad:
        raise ConfigError(f"unknown mitigation(s) {sorted(bad)}; allowed: {', '.join(MITIGATIONS)}")
    if int(merged["min_group_size"]) < 1 or int(merged["n_resamples"]) < 10:
        raise ConfigError("min_group_size must be >= 1 and n_resamples >= 10")
    return merged


@register_auditor
class FairnessAuditor:
    """Group fairness of a binary tabular classifier over its sensitive features."""

    name = "fairness"

    def applies_to(self, subject: Subject) -> bool:
        return (subject.modality == "tabular" and subject.task == "classification"
                and subject.data.n_classes == 2 and bool(subject.data.features.sensitive))

    def run(self, subject: Subject, config: AuditConfig) -> AuditResult:
        p = resolve_params(config.params, config.tier)
        result = AuditResult(self.name)
        split = subject.split(p["split"])
        features = list(p["sensitive_features"] or subject.data.features.sensitive)
        groupings, problems = build_groupings(split, features, min_group_size=p["min_group_size"],
                                              intersections=p["intersections"])
        for problem in problems:
            result.add_finding("medium", problem)
        if not groupings:
            raise DataError(f"no usable sensitive feature among {features}: "
                            + "; ".join(problems))
        scores = subject.predict_proba(split.X)[:, 1]
        y_pred = (scores >= 0.5).astype(np.int64)
        fit_split = (_fit_split(subject, p["mitigation_split"], p["split"])
                     if "threshold_optimizer" in p["mitigation"] else None)
        eval_ = _Eval(split.y, y_pred, scores, fit_split,
                      None if fit_split is None else subject.predict_proba(fit_split.X)[:, 1])
        result.add_metric("accuracy", float(np.mean(split.y == y_pred)))
        if len(np.unique(y_pred)) == 1:
            result.add_finding("high", f"the model predicts class {y_pred[0]} for every row of "
                               f"the {p['split']} split: selection-rate ratios are undefined and "
                               "rate disparities are degenerate")
        train_groups = {g.name: g for g in build_groupings(
            subject.split("train"), features, min_group_size=1,
            intersections=p["intersections"])[0]}
        steps = len(groupings) + int(bool(p["slices"]))
        with progress_bar(f"fairness of {subject.name}", steps, config.show_progress) as bar:
            for grouping in groupings:
                try:
                    self._grouping(result, config, p, eval_, grouping,
                                   train_groups.get(grouping.name), subject.split("train"))
                    if len(grouping.features) == 1 and p["mitigation"]:
                        self._mitigate(result, config, p, subject, eval_, grouping)
                except Exception as exc:  # noqa: BLE001 - one grouping must not sink the rest
                    result.add_finding("high", f"{grouping.name}: fairness analysis failed "
                                       f"({type(exc).__name__}: {exc}); other groupings ran")
                bar.advance(grouping.name)
            if p["slices"]:
                self._slices(result, config, p, split.frame, split.y == y_pred)
                bar.advance("weak slices")
        if any(f.severity == "high" for f in result.findings):
            result.status = "failed"
        return result

    # -- one grouping ---------------------------------------------------------------------------

    def _grouping(self, result: AuditResult, config: AuditConfig, p: dict, ev: "_Eval",
                  g: Grouping, train_g: Grouping | None, train_split: Split) -> None:
        valid = g.valid
        table = group_table(ev.y, ev.pred, ev.score, g.codes, g.labels)
        counts = confusion_counts(ev.y, ev.pred, g.codes, len(g.labels))
        intervals: dict[str, dict] = {m: {} for m in RATE_CELLS}
        for i, label in enumerate(g.labels):
            prefix = f"{g.name}.by_group.{label}"
            result.add_metric(f"{prefix}.share", counts[i].sum() / valid.sum())
            for metric in table.columns:
                ci = None
                if metric in RATE_CELLS:
                    hits, trials = (int(counts[i, list(cells)].sum()) for cells in RATE_CELLS[metric])
                    ci = clopper_pearson(hits, trials) if trials else (np.nan, np.nan)
                    intervals[metric][label] = ci
                result.add_metric(f"{prefix}.{metric}", float(table.loc[label, metric]), ci)
        self._data_bias(result, p, g, train_g, train_split)
        keep = g.large_enough()
        if keep.sum() < 2:
            result.add_finding("medium", f"{g.name}: fewer than two groups have at least "
                               f"{p['min_group_size']} rows, so no disparity is reported")
        else:
            self._disparities(result, p, config.seed, g.name, counts[keep])
        self._plots(result, config, g, table, intervals, ev)

    def _disparities(self, result: AuditResult, p: dict, seed: int, name: str,
                     counts: np.ndarray) -> None:
        estimates = disparity_estimates(counts, n_resamples=int(p["n_resamples"]), seed=seed,
                                        confidence=float(p["confidence"]))
        for metric, est in estimates.items():
            result.add_metric(f"{name}.{metric}", est.value, est.ci)
        ratio, eo = estimates["demographic_parity_ratio"], estimates["equalized_odds_difference"]
        if ratio.ci[1] < p["min_demographic_parity_ratio"]:
            result.add_finding("high", f"{name}: demographic-parity ratio {ratio.value:.3f} "
                               f"(CI {ratio.ci[0]:.3f}-{ratio.ci[1]:.3f}) is below the "
                               f"four-fifths rule ({p['min_demographic_parity_ratio']})",
                               f"fairness.{name}.demographic_parity_ratio")
        if eo.ci[0] > p["max_equalized_odds_difference"]:
            result.add_finding("high", f"{name}: equalized-odds difference {eo.value:.3f} "
                               f"(CI {eo.ci[0]:.3f}-{eo.ci[1]:.3f}) exceeds "
                               f"{p['max_equalized_odds_difference']}",
                               f"fairness.{name}.equalized_odds_difference")
        elif eo.value > p["max_equalized_odds_difference"]:
            result.add_finding("low", f"{name}: equalized-odds difference {eo.value:.3f} exceeds "
                               f"{p['max_equalized_odds_difference']} but its CI "
                               f"({eo.ci[0]:.3f}-{eo.ci[1]:.3f}) does not exclude it",
                               f"fairness.{name}.equalized_odds_difference")

    def _data_bias(self, result: AuditResult, p: dict, g: Grouping, train_g: Grouping | None,
                   train_split: Split) -> None:
        """Representation and label base rates in train, next to the audited split's."""
        if train_g is None:
            return
        sizes = train_g.sizes
        base = np.bincount(train_g.codes[train_g.valid], weights=train_split.y[train_g.valid],
                           minlength=len(train_g.labels)) / np.maximum(sizes, 1)
        shares = sizes / max(sizes.sum(), 1)
        for label, share, rate in zip(train_g.labels, shares, base):
            result.add_metric(f"{g.name}.by_group.{label}.train_share", share)
            result.add_metric(f"{g.name}.by_group.{label}.train_base_rate", rate)
        large = sizes >= p["min_group_size"]
        if large.sum() >= 2:
            result.add_metric(f"{g.name}.train_base_rate_difference",
                              float(base[large].max() - base[large].min()))
        test_share = dict(zip(g.labels, g.sizes / max(g.sizes.sum(), 1)))
        shifted = [f"{label} ({share:.3f} train vs {test_share[label]:.3f})"
                   for label, share in zip(train_g.labels, shares)
                   if label in test_share and abs(share - test_share[label]) > 0.05]
        if shifted:
            result.add_finding("low", f"{g.name}: group representation differs between train and "
                               f"the audited split: {', '.join(shifted)}")

    def _plots(self, result: AuditResult, config: AuditConfig, g: Grouping, table: pd.DataFrame,
               intervals: dict, ev: "_Eval") -> None:
        path, artifact = config.artifact(f"{g.name}_by_group.json", "plot",
                                         f"{g.name}: rates by group with 95% CIs")
        metric_by_group(g.name, table, intervals, PLOTTED).write_json(path)
        result.artifacts.append(artifact)
        curves = {label: reliability_curve(ev.y[g.codes == i], ev.score[g.codes == i])
                  for i, label in enumerate(g.labels) if label not in g.small}
        path, artifact = config.artifact(f"{g.name}_calibration.json", "plot",
                                         f"{g.name}: reliability curve per group")
        calibration_by_group(g.name, curves).write_json(path)
        result.artifacts.append(artifact)

    # -- mitigation -----------------------------------------------------------------------------

    def _mitigate(self, result: AuditResult, config: AuditConfig, p: dict, subject: Subject,
                  ev: "_Eval", g: Grouping) -> None:
        keep = g.large_enough()
        labels = np.asarray(g.labels, dtype=object)

        def score(method: str, setting: str, pred: np.ndarray) -> Outcome:
            return outcome(method, setting, ev.y, pred, g.codes, len(g.labels), keep)

        before = score("original", "", ev.pred)
        outcomes = [before]
        feature = g.name
        for method in p["mitigation"]:
            try:
                found = self._run_mitigation(method, p, config.seed, subject, feature, ev, g,
                                             labels, score)
            except Exception as exc:  # noqa: BLE001 - report and keep the other methods
                result.add_finding("medium", f"{feature}: mitigation {method} failed "
                                   f"({type(exc).__name__}: {exc})")
                continue
            outcomes += found
        for o in outcomes[1:]:
            name = f"{feature}.{o.method}" + (f".{o.setting}" if o.setting else "")
            result.add_metric(f"{name}.accuracy", o.accuracy)
            result.add_metric(f"{name}.equalized_odds_difference", o.equalized_odds_difference)
            result.add_metric(f"{name}.demographic_parity_difference",
                              o.demographic_parity_difference)
            if o.method == "threshold_optimizer":
                cut = 1 - o.equalized_odds_difference / before.equalized_odds_difference
                result.add_metric(f"{name}.equalized_odds_reduction", cut)
                result.add_metric(f"{name}.accuracy_cost", before.accuracy - o.accuracy)
                result.add_finding("info", f"{feature}: ThresholdOptimizer (equalized odds, fit "
                                   f"on {len(ev.fit_split)} rows outside the audited split) "
                                   f"moves the expected equalized-odds difference "
                                   f"{before.equalized_odds_difference:.3f} -> "
                                   f"{o.equalized_odds_difference:.3f} ({cut:+.0%} cut) at "
                                   f"accuracy {before.accuracy:.4f} -> {o.accuracy:.4f}")
        path, artifact = config.artifact(f"{feature}_tradeoff.json", "plot",
                                         f"{feature}: accuracy vs equalized-odds difference")
        tradeoff_curve(feature, outcomes).write_json(path)
        result.artifacts.append(artifact)

    def _run_mitigation(self, method: str, p: dict, seed: int, subject: Subject, feature: str,
                        ev: "_Eval", g: Grouping, labels: np.ndarray, score) -> list[Outcome]:
        valid = g.valid
        if method == "threshold_optimizer":
            fit_g = _same_grouping(ev.fit_split, g.features[0])
            pred = ev.pred.astype(float)
            pred[valid] = threshold_optimizer(ev.fit_score[fit_g.valid],
                                              ev.fit_split.y[fit_g.valid], fit_g.values(),
                                              ev.score[valid], labels[g.codes[valid]], seed=seed)
            return [score(method, "", pred)]
        train = subject.split("train")
        train_g = _same_grouping(train, g.features[0])
        rows = np.random.default_rng(seed).permutation(np.flatnonzero(train_g.valid))
        if method == "fair_finetune":
            rows = rows[:int(p["finetune_max_rows"])]
            outcomes = []
            for weight in p["finetune_weights"]:
                tuned = fair_finetune(subject.clean_model(), train.X[rows], train.y[rows],
                                      train_g.codes[rows], weight=float(weight), seed=seed)
                pred = predict(tuned, subject.split(p["split"]).X).argmax(axis=1)
                outcomes.append(score(method, _setting("weight", weight), pred))
            return outcomes
        rows = rows[:int(p["eg_max_rows"])]
        X_fit, y_fit = train.X[rows], train.y[rows]
        groups_fit = np.asarray(train_g.labels, dtype=object)[train_g.codes[rows]]
        X_eval = subject.split(p["split"]).X
        outcomes = [score("logistic_regression", "", exponentiated_gradient(
            X_fit, y_fit, groups_fit, X_eval, difference_bound=None))]
        for bound in p["eg_bounds"]:
            pred = exponentiated_gradient(X_fit, y_fit, groups_fit, X_eval,
                                          difference_bound=float(bound), seed=seed)
            outcomes.append(score(method, _setting("bound", bound), pred))
        return outcomes

    # -- weak slices ----------------------------------------------------------------------------

    def _slices(self, result: AuditResult, config: AuditConfig, p: dict,
                frame: pd.DataFrame | None, correct: np.ndarray) -> None:
        if frame is None:
            return
        try:
            slices = find_weak_slices(frame, correct, min_size=int(p["min_group_size"]))
        except Exception as exc:  # noqa: BLE001 - slices are one sub-analysis among several
            result.add_finding("medium", f"weak-slice search failed ({type(exc).__name__}: {exc})")
            return
        overall = float(np.mean(correct))
        for rank, s in enumerate(slices, start=1):
            result.add_metric(f"slices.rank{rank}.accuracy", s.accuracy, s.ci)
            result.add_metric(f"slices.rank{rank}.size", s.size)
            result.add_finding("medium" if rank == 1 else "low",
                               f"weak slice #{rank}: {s.description} (n={s.size}) has accuracy "
                               f"{s.accuracy:.3f} (95% CI {s.ci[0]:.3f}-{s.ci[1]:.3f}) vs "
                               f"{overall:.3f} overall", f"fairness.slices.rank{rank}.accuracy")
        path, artifact = config.artifact("weak_slices.json", "table",
                                         "slices confidently below overall accuracy")
        path.write_text(json.dumps([{"slice": s.description, "size": s.size,
                                     "accuracy": s.accuracy, "ci": list(s.ci)} for s in slices],
                                   indent=1))
        result.artifacts.append(artifact)


@dataclass
class _Eval:
    """Labels, hard predictions and positive-class scores of the audited split."""

    y: np.ndarray
    pred: np.ndarray
    score: np.ndarray
    fit_split: Split | None = None  # the rows ThresholdOptimizer is fit on
    fit_score: np.ndarray | None = None  # and their scores


def _fit_split(subject: Subject, names: str | list[str] | None, audited: str) -> Split:
    """The rows ThresholdOptimizer is fit on (``mitigation_split``: one split name, several, or
    ``None`` for every split but the audited one), as one split."""
    if names is None:
        names = [name for name in subject.data.splits if name != audited]
    names = [names] if isinstance(names, str) else list(names)
    if not names or audited in names:
        raise ConfigError(f"mitigation_split must name splits other than the audited split "
                          f"{audited!r}, got {names}")
    return Split.concat([subject.split(name) for name in names])


def _same_grouping(split: Split, feature: str) -> Grouping:
    """The grouping of ``feature`` in another split (to fit a mitigation there)."""
    groupings, _ = build_groupings(split, [feature], min_group_size=1, intersections=False)
    if not groupings:
        raise DataError(f"sensitive feature {feature!r} is unusable in the fitting split")
    return groupings[0]


def _setting(name: str, value: float) -> str:
    """A metric-name-safe setting label: weight_0p5, bound_0p01."""
    return safe_label(f"{name}_{value:g}".replace(".", "p"))
