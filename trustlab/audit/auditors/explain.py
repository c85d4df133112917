"""The explainability auditor: attributions that are checked, not just drawn. See docs/explain.md.

Per classifier: attributions of every applicable method (IG with adaptive steps and its
completeness gap), the cascading parameter-randomisation test (and data randomisation where
cheap), deletion/insertion AUCs against a random ranking, Captum's infidelity and sensitivity,
a faithfulness ranking of the methods, TCAV with data-built concepts, and the attribution mass on
sensitive features and their proxies per group. Each stage that fails becomes a finding and an
``<stage>.errored`` metric; the others still run.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from trustlab.audit.report import AuditResult
from trustlab.audit.runner import AuditConfig, register_auditor
from trustlab.errors import ConfigError
from trustlab.explain import (Explainer, adaptive_integrated_gradients, feature_mask,
                              fold_groups, global_importance, method_info, methods_for,
                              model_facts, predicted_target)
from trustlab.explain.methods import PERTURBATION, seeded
from trustlab.explain.fairness import proxy_strength, sensitive_reliance
from trustlab.explain.faithfulness import (Curves, attribution_infidelity,
                                           attribution_sensitivity, deletion_insertion,
                                           random_attributions, rank_methods)
from trustlab.explain.plots import faithfulness_curves, heatmap_grid, importance_bars, local_bars
from trustlab.explain.sanity import data_randomisation, parameter_randomisation, repeatability
from trustlab.explain.tcav import data_concepts, default_layer, random_sets, tcav_scores
from trustlab.stats import bootstrap_ci
from trustlab.train.progress import progress_bar
from trustlab.train.subject import Subject
from trustlab.train.zoo import arch_info

DEFAULTS = {
    "split": "test",
    "n_examples": {"smoke": 16, "full": 48},  # explained rows (IG, methods, faithfulness)
    "methods": {"smoke": ["Saliency", "IntegratedGradients", "AttentionRollout"], "full": None},
    "completeness_tol": 1e-2,
    # cascade points (1 = fully randomised only); perturbation methods get the last point only
    "cascade_stages": {"smoke": 1, "full": 5},
    "cascade_examples": {"smoke": 16, "full": 16},
    "metric_examples": {"smoke": 0, "full": 8},  # infidelity / sensitivity_max (0 = skip)
    "deletion_steps": 16,
    "tcav_random_sets": {"smoke": 0, "full": 6},  # 0 = skip TCAV
    "tcav_examples": 64,
    "data_randomisation_max_rows": {"smoke": 0, "full": 2000},  # train rows; 0 = skip
    "data_randomisation_epochs": 8,
    "fairness_examples": {"smoke": 64, "full": 128},
    "max_random_correlation": 0.5,
    "max_sensitive_share": 0.05,
    "max_proxy_share": 0.25,
    "n_resamples": {"smoke": 200, "full": 1000},
}
CAPTUM_IG_STEPS = 32  # IG inside repeated checks (cascade, sensitivity): Captum's rule, fixed


def resolve_params(params: dict, tier: str) -> dict:
    """Defaults filled in, tier-dependent ones picked; unknown names raise ConfigError."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown explain parameter(s) {sorted(unknown)}; allowed: "
                          f"{sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **params}
    return {k: v[tier] if isinstance(v, dict) and set(v) == {"smoke", "full"} else v
            for k, v in merged.items()}


def metric_label(text: str) -> str:
    """A metric-name part from free text (group values such as 'Native American')."""
    return re.sub(r"[^A-Za-z0-9_\-<>=+]", "_", text)


@dataclass
class Setup:
    """What every stage shares: the model, the explained rows, targets and baselines."""

    model: nn.Module
    inputs: torch.Tensor
    target: torch.Tensor
    baseline: torch.Tensor  # one row: black image, or the training mean for tabular data
    background: torch.Tensor  # rows for GradientShap's baseline distribution
    mask: torch.Tensor | None  # one-hot columns of a feature share an id (tabular)
    methods: list[str]
    params: dict

    def kwargs(self, method: str) -> dict:
        """Per-method Captum arguments: baselines and, for tabular data, the feature mask."""
        info = method_info(method)
        extra: dict = {}
        if info.uses_baselines:
            extra["baselines"] = self.background if method == "GradientShap" else self.baseline
        if method in ("KernelShap", "Lime") and self.mask is not None:
            extra["feature_mask"] = self.mask
        if method == "IntegratedGradients":
            extra["n_steps"] = CAPTUM_IG_STEPS
        return extra

    def explain_fn(self, method: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor],
                                                  torch.Tensor]:
        kwargs = self.kwargs(method)

        def explain(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return Explainer(model, method, modality=self.facts_modality).attribute(
                inputs, target, **kwargs)

        return explain

    @property
    def facts_modality(self) -> str:
        return "image" if self.inputs.dim() == 4 else "tabular"


@register_auditor
class ExplainAuditor:
    """Attributions, their sanity and faithfulness checks, TCAV and fairness × explanation."""

    name = "explain"

    def applies_to(self, subject: Subject) -> bool:
        return subject.task == "classification"

    def run(self, subject: Subject, config: AuditConfig) -> AuditResult:
        params = resolve_params(config.params, config.tier)
        result = AuditResult(self.name)
        setup = self._setup(subject, params, config.seed, "methods" in config.params)
        result.config = {"tier": config.tier, "n_examples": len(setup.inputs),
                         "methods": setup.methods}
        stages: list[tuple[str, Callable[[], None]]] = []
        attributions: dict[str, torch.Tensor] = {}
        stages.append(("attributions", lambda: self._attributions(setup, attributions, result)))
        stages.append(("sanity", lambda: self._sanity(subject, setup, result, config)))
        stages.append(("faithfulness",
                       lambda: self._faithfulness(setup, attributions, result, config)))
        if params["metric_examples"]:
            stages.append(("captum_metrics",
                           lambda: self._captum_metrics(setup, attributions, result, config)))
        if params["tcav_random_sets"]:
            stages.append(("tcav", lambda: self._tcav(subject, setup, result, config.seed)))
        if subject.modality == "tabular" and subject.data.features.sensitive:
            stages.append(("fairness", lambda: self._fairness(subject, setup, result, config)))
        stages.append(("pictures",
                       lambda: self._pictures(subject, setup, attributions, result, config)))
        seconds: dict[str, float] = {}
        result.config["stage_seconds"] = seconds
        with progress_bar(f"explain {subject.name}", len(stages), config.show_progress) as bar:
            for stage, work in stages:
                started = time.perf_counter()
                try:
                    with seeded(config.seed):
                        work()
                except Exception as exc:  # noqa: BLE001 - one failed stage must not stop the rest
                    result.add_metric(f"{stage}.errored", 1.0)
                    result.add_finding("medium", f"explain stage {stage!r} failed: "
                                       f"{type(exc).__name__}: {exc}",
                                       f"{self.name}.{stage}.errored")
                seconds[stage] = round(time.perf_counter() - started, 2)
                bar.advance(stage)
        return result

    # --- set-up -------------------------------------------------------------------------------

    def _setup(self, subject: Subject, params: dict, seed: int, explicit: bool) -> Setup:
        model = subject.clean_model()
        split = subject.split(params["split"])
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(split), min(params["n_examples"], len(split)), replace=False)
        inputs = torch.from_numpy(split.X[np.sort(rows)])
        train_X = subject.split("train").X
        if subject.modality == "image":
            baseline = torch.full((1, *inputs.shape[1:]), float(subject.data.value_range[0]))
            mask = None
        else:
            baseline = torch.from_numpy(train_X.mean(axis=0, keepdims=True))
            mask = feature_mask(subject.data.features.groups, inputs.shape[1])
        background = torch.from_numpy(train_X[rng.choice(len(train_X), 32, replace=False)])
        facts = model_facts(model, inputs, arch=subject.arch, modality=subject.modality)
        applicable = methods_for(facts)
        if explicit:  # the user's list must apply as a whole; a tier's list is filtered
            for method in params["methods"]:
                method_info(method)
            unknown = [m for m in params["methods"] if m not in applicable]
            if unknown:
                raise ConfigError(f"method(s) {unknown} do not apply to {subject.arch}; methods "
                                  f"that do: {', '.join(applicable)}")
        methods = [m for m in params["methods"] or applicable if m in applicable]
        return Setup(model, inputs, predicted_target(model, inputs), baseline, background, mask,
                     methods, params)

    # --- stages ---------------------------------------------------------------------------------

    def _attributions(self, setup: Setup, out: dict, result: AuditResult) -> None:
        for method in setup.methods:
            if method == "IntegratedGradients":
                ig = adaptive_integrated_gradients(setup.model, setup.inputs, setup.target,
                                                   setup.baseline.expand_as(setup.inputs),
                                                   tol=setup.params["completeness_tol"])
                out[method] = ig.attributions
                self._completeness(ig, result, setup.params["completeness_tol"])
            else:
                out[method] = Explainer(setup.model, method, modality=setup.facts_modality) \
                    .attribute(setup.inputs, setup.target, **setup.kwargs(method))

    def _completeness(self, ig, result: AuditResult, tol: float) -> None:
        worst = ig.worst_relative_gap
        result.add_metric("completeness.worst_relative_gap", worst)
        result.add_metric("completeness.median_relative_gap",
                          float(np.median(ig.relative_gap[ig.judged])) if ig.judged.any() else 0)
        result.add_metric("completeness.mean_steps", float(ig.steps.mean()))
        result.add_metric("completeness.max_steps", float(ig.steps.max()))
        if worst > tol:
            result.add_finding("medium", f"Integrated Gradients misses completeness by "
                               f"{worst:.3g} (relative) on its worst example even with "
                               f"{ig.steps.max()} steps: its attributions do not add up to the "
                               f"output change", f"{self.name}.completeness.worst_relative_gap")

    def _sanity(self, subject: Subject, setup: Setup, result: AuditResult,
                config: AuditConfig) -> None:
        p = setup.params
        n = min(p["cascade_examples"], len(setup.inputs))
        inputs, target = setup.inputs[:n], setup.target[:n]
        table = {}
        for method in setup.methods:
            explain = setup.explain_fn(method)
            stages = 1 if method_info(method).kind == PERTURBATION else p["cascade_stages"]
            cascade = parameter_randomisation(explain, setup.model, inputs, target,
                                              max_stages=stages, seed=config.seed)
            final = cascade.spearman[-1]
            ci = bootstrap_ci(lambda idx: final[idx].mean(axis=1), len(final),
                              n_resamples=p["n_resamples"], seed=config.seed)
            result.add_metric(f"{method}.randomisation_spearman", cascade.fully_randomised, ci)
            table[method] = {"layers": cascade.layers, "mean_spearman": cascade.mean.tolist()}
            if cascade.fully_randomised > p["max_random_correlation"]:
                result.add_finding("medium", f"{method} attributions stay rank-correlated with "
                                   f"those of a fully randomised model (Spearman "
                                   f"{cascade.fully_randomised:.2f}): they reflect the input more "
                                   f"than what the model learnt (Adebayo et al. 2018)",
                                   f"{self.name}.{method}.randomisation_spearman")
            if method_info(method).stochastic and config.tier == "full":
                result.add_metric(f"{method}.repeatability",
                                  float(repeatability(explain, setup.model, inputs, target,
                                                      seed=config.seed).mean()))
        train_rows = len(subject.split("train"))
        if 0 < train_rows <= p["data_randomisation_max_rows"] and "Saliency" in setup.methods:
            rho = data_randomisation(setup.explain_fn("Saliency"), setup.model, subject.data,
                                     inputs, target, training=arch_info(subject.arch).training,
                                     epochs=p["data_randomisation_epochs"], seed=config.seed)
            result.add_metric("Saliency.data_randomisation_spearman", float(rho.mean()))
            table["data_randomisation"] = {"method": "Saliency", "mean_spearman": float(rho.mean())}
        path, artifact = config.artifact("randomisation_cascade.json", "table",
                                         "mean Spearman of attributions: trained vs randomised "
                                         "from the output layer down")
        path.write_text(json.dumps(table, indent=1))
        result.artifacts.append(artifact)

    def _faithfulness(self, setup: Setup, attributions: dict, result: AuditResult,
                      config: AuditConfig) -> None:
        p = setup.params
        curves: dict[str, Curves] = {}
        ranked = {**attributions, "random": random_attributions(setup.inputs, config.seed)}
        for method, attr in ranked.items():
            c = deletion_insertion(setup.model, setup.inputs, attr, setup.target,
                                   baselines=setup.baseline, feature_mask=setup.mask,
                                   steps=p["deletion_steps"])
            curves[method] = c
            for kind, values in (("deletion_auc", c.deletion_auc), ("insertion_auc",
                                                                    c.insertion_auc)):
                ci = bootstrap_ci(lambda idx, v=values: v[idx].mean(axis=1), len(values),
                                  n_resamples=p["n_resamples"], seed=config.seed)
                result.add_metric(f"{method}.{kind}", float(values.mean()), ci)
        rnd = curves["random"].deletion_auc.mean()
        for method in attributions:
            if curves[method].deletion_auc.mean() >= rnd:
                result.add_finding("medium", f"{method} is no more faithful than a random "
                                   f"ranking: deleting its top features lowers the prediction no "
                                   f"faster (deletion AUC {curves[method].deletion_auc.mean():.3f}"
                                   f" vs random {rnd:.3f})", f"{self.name}.{method}.deletion_auc")
        ranking = rank_methods({m: (c.deletion_auc.mean(), c.insertion_auc.mean())
                                for m, c in curves.items()})
        for position, (method, score) in enumerate(ranking, start=1):
            result.add_metric(f"{method}.faithfulness_rank", position)
            result.add_metric(f"{method}.faithfulness_score", score)
        result.add_finding("info", "methods by faithfulness (insertion − deletion AUC): " +
                           ", ".join(f"{m} {s:.3f}" for m, s in ranking))
        path, artifact = config.artifact("deletion_insertion.json", "plot",
                                         "deletion and insertion curves per method")
        faithfulness_curves(curves, "deletion / insertion").write_json(str(path))
        result.artifacts.append(artifact)

    def _captum_metrics(self, setup: Setup, attributions: dict, result: AuditResult,
                        config: AuditConfig) -> None:
        n = setup.params["metric_examples"]
        inputs, target = setup.inputs[:n], setup.target[:n]
        for method, attr in attributions.items():
            result.add_metric(f"{method}.infidelity", float(attribution_infidelity(
                setup.model, inputs, attr[:n], target, seed=config.seed).mean()))
            if method_info(method).stochastic:
                continue  # a sampled method's sensitivity would measure its sampling noise
            explain = setup.explain_fn(method)
            result.add_metric(f"{method}.sensitivity_max", float(attribution_sensitivity(
                lambda x, target: explain(setup.model, x, target), inputs, target,
                seed=config.seed).mean()))

    def _tcav(self, subject: Subject, setup: Setup, result: AuditResult, seed: int) -> None:
        p = setup.params
        try:
            layer = default_layer(setup.model)
        except ConfigError as exc:
            result.add_finding("info", f"TCAV skipped: {exc}")
            return
        concepts = data_concepts(subject.data, seed=seed)
        randoms = random_sets(subject.data, p["tcav_random_sets"], seed=seed)
        split = subject.split(p["split"])
        target = int(np.bincount(setup.target.numpy()).argmax())
        rows = np.flatnonzero(split.y == target)[:p["tcav_examples"]]
        scores = tcav_scores(setup.model, torch.from_numpy(split.X[rows]), target, concepts,
                             randoms, layer=layer, seed=seed)
        for s in scores:
            key = f"tcav.{metric_label(s.concept)}"
            result.add_metric(f"{key}.score", s.mean)
            result.add_metric(f"{key}.p_value", s.p_value)
            if s.significant():
                group = "=" in s.concept
                way = "raises" if s.mean > s.null_scores.mean() else "lowers"
                result.add_finding("low" if group else "info",
                                   f"concept {s.concept!r} significantly {way} the "
                                   f"{subject.data.classes[target]!r} logit at layer {s.layer} "
                                   f"(TCAV {s.mean:.2f} vs random {s.null_scores.mean():.2f}, "
                                   f"p={s.p_value:.3g})" +
                                   (": group membership is encoded and used" if group else ""),
                                   f"{self.name}.{key}.score")

    def _fairness(self, subject: Subject, setup: Setup, result: AuditResult,
                  config: AuditConfig) -> None:
        p = setup.params
        split = subject.split(p["split"])
        rows = np.random.default_rng(config.seed + 2).choice(
            len(split), min(p["fairness_examples"], len(split)), replace=False)
        inputs = torch.from_numpy(split.X[rows])
        target = predicted_target(setup.model, inputs)
        attr = Explainer(setup.model, "IntegratedGradients").attribute(
            inputs, target, baselines=setup.baseline, n_steps=CAPTUM_IG_STEPS)
        folded, names = fold_groups(attr, subject.data.features.groups)
        for attribute in subject.data.features.sensitive:
            strength = proxy_strength(subject.data, attribute, seed=config.seed)
            reliance = sensitive_reliance(folded, names, split.sensitive[attribute].to_numpy()[rows],
                                          attribute, strength, n_resamples=p["n_resamples"],
                                          seed=config.seed)
            key = f"fairness.{metric_label(attribute)}"
            result.add_metric(f"{key}.share", reliance.share)
            result.add_metric(f"{key}.proxy_share", reliance.proxy_share)
            for group, stats in reliance.by_group.items():
                result.add_metric(f"{key}.{metric_label(group)}.share", stats["share"],
                                  (stats["share_ci_low"], stats["share_ci_high"]))
                result.add_metric(f"{key}.{metric_label(group)}.proxy_share", stats["proxy_share"])
            proxies = ", ".join(f"{f} (AUC {a:.2f})" for f, a in reliance.proxies) or "none"
            if reliance.share > p["max_sensitive_share"]:
                result.add_finding("medium", f"the model leans on {attribute}: "
                                   f"{reliance.share:.1%} of its attribution mass (IG) falls on "
                                   f"it", f"{self.name}.{key}.share")
            if reliance.proxy_share > p["max_proxy_share"]:
                result.add_finding("low", f"{reliance.proxy_share:.1%} of the attribution mass "
                                   f"falls on proxies of {attribute}: {proxies}",
                                   f"{self.name}.{key}.proxy_share")
            else:
                result.add_finding("info", f"proxies of {attribute}: {proxies}; they carry "
                                   f"{reliance.proxy_share:.1%} of the attribution mass")

    def _pictures(self, subject: Subject, setup: Setup, attributions: dict,
                  result: AuditResult, config: AuditConfig) -> None:
        if subject.modality == "image":
            grid = heatmap_grid(setup.inputs[:8].numpy(),
                                {m: a[:8].numpy() for m, a in attributions.items()})
            path, artifact = config.artifact("heatmaps.png", "image",
                                             "input and signed attribution per method "
                                             "(red positive, blue negative)")
            grid.save(path)
            result.artifacts.append(artifact)
            return
        groups = subject.data.features.groups
        for method, attr in attributions.items():
            folded, names = fold_groups(attr, groups)
            importance = global_importance(folded, names, n_resamples=setup.params["n_resamples"],
                                           seed=config.seed)
            path, artifact = config.artifact(f"importance_{method}.json", "plot",
                                             f"global importance ({method}), one-hot folded")
            importance_bars(importance, f"{method}: mean |attribution|").write_json(str(path))
            result.artifacts.append(artifact)
        method = "IntegratedGradients" if "IntegratedGradients" in attributions else \
            next(iter(attributions))
        folded, names = fold_groups(attributions[method], groups)
        labels = [f"row {i} → {subject.data.classes[int(t)]}" for i, t in
                  enumerate(setup.target[:4])]
        path, artifact = config.artifact("local_explanations.json", "plot",
                                         f"signed {method} attributions of four examples")
        local_bars(folded[:4], names, labels, f"{method}: local explanations").write_json(str(path))
        result.artifacts.append(artifact)
