"""The privacy auditor: membership inference from loss thresholds up to LiRA/RMIA, and ε̂.

Members are a sample of ``subject.split("train")`` (for the autoencoder: its negative-class rows,
the ones it trained on), non-members as many rows of ``subject.split("holdout")``; the artifact
``membership_rows.json`` names both sets by source row id. Reference models are the subject's
architecture retrained with its recorded recipe on random halves of that audit set.
"""

from __future__ import annotations

import json
import re

import numpy as np

from trustlab.attacks.attribute import attribute_columns, attribute_inference
from trustlab.attacks.inversion import (image_grid, inversion_quality, miface,
                                        regularised_inversion)
from trustlab.attacks.membership import (art_blackbox_scores, art_classifier, check_disjoint,
                                         check_logits, confidence_scores, loss_scores,
                                         lira_scores, reconstruction_scores,
                                         reconstruction_statistic, reference_attack_scores,
                                         shadow_attack_scores)
from trustlab.attacks.reference_models import RecipeSettings, train_reference_models
from trustlab.audit.report import AuditResult
from trustlab.audit.runner import AuditConfig, register_auditor
from trustlab.errors import ConfigError
from trustlab.privacy.audit import (DEFAULT_FPRS, MIAMetrics, epsilon_lower_bound,
                                    group_tpr_at_fpr, mia_metrics, min_nonmembers)
from trustlab.train.data import Split
from trustlab.train.subject import Subject
from trustlab.train.trainer import input_spec_for, training_rows

# per tier: audit-set size per side, reference models (tabular / image), reference epochs cap
# inversion: steps of the regularised inversion, MIFace iterations (0: skip)
TIERS = {"smoke": {"samples": 400, "reference_models": 4, "image_reference_models": 0,
                   "max_epochs": 10, "population_z": 500, "inversion_steps": 100,
                   "miface_iter": 0},
         "full": {"samples": None, "reference_models": 16, "image_reference_models": 8,
                  "max_epochs": None, "population_z": 2000, "inversion_steps": 500,
                  "miface_iter": 1000}}
STRONGEST = "lira"
EXPOSED = 20


def _metric_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", str(text)) or "_"


@register_auditor
class PrivacyAuditor:
    """Membership inference (threshold, ART black-box, shadow, LiRA, RMIA), per-group leakage,
    the most exposed members and the empirical ε lower bound; for DP models against the claim.

    Params: ``samples`` (members = non-members per side), ``reference_models``,
    ``max_epochs`` (cap on the reference recipe), ``seed``."""

    name = "privacy"

    def applies_to(self, subject: Subject) -> bool:
        return subject.task in ("classification", "reconstruction")

    def run(self, subject: Subject, config: AuditConfig) -> AuditResult:
        settings = {**TIERS[config.tier], **config.params}
        unknown = set(config.params) - set(TIERS["full"]) - {"seed"}
        if unknown:
            raise ConfigError(f"unknown privacy auditor parameter(s) {sorted(unknown)}; "
                              f"allowed: {sorted(TIERS['full'])}")
        seed = int(settings.get("seed", config.seed))
        result = AuditResult(self.name)
        members, nonmembers = self._audit_sets(subject, settings["samples"], seed)
        X = np.concatenate([members.X, nonmembers.X])
        y = np.concatenate([members.y, nonmembers.y])
        is_member = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
        rows = np.r_[members.rows, nonmembers.rows]
        self._write_rows(config, result, subject, members, nonmembers)
        if subject.task == "reconstruction":
            scores = self._autoencoder_attacks(subject, X, is_member, settings, seed, config)
        else:
            scores = self._classifier_attacks(subject, X, y, is_member, settings, seed, config,
                                              result)
        fprs = tuple(f for f in DEFAULT_FPRS if len(nonmembers) >= min_nonmembers(f))
        for fpr in sorted(set(DEFAULT_FPRS) - set(fprs)):
            result.add_finding("info", f"TPR at {fpr:g} FPR not measured: it needs at least "
                               f"{min_nonmembers(fpr)} non-members, the audit set has "
                               f"{len(nonmembers)} (run the full tier)")
        graded = {}
        for attack, values in scores.items():
            graded[attack] = metrics = mia_metrics(values, is_member, fprs=fprs, seed=seed)
            self._record(result, attack, metrics)
        strongest = STRONGEST if STRONGEST in scores else next(iter(scores))
        self._roc_plot(config, result, graded)
        self._groups(result, scores[strongest], is_member, members, nonmembers, strongest)
        self._exposed(config, result, scores[strongest], is_member, rows, y, members, strongest)
        self._epsilon(subject, result, scores[strongest], is_member, strongest)
        if subject.task == "classification" and subject.modality == "image":
            self._inversion(subject, config, result, settings, seed)
        if subject.task == "classification" and subject.modality == "tabular":
            self._attributes(subject, result, members, seed)
        result.config = {"members": f"{len(members)} rows of split 'train'"
                                    + (" (class 0: the rows it trained on)"
                                       if subject.task == "reconstruction" else ""),
                         "nonmembers": f"{len(nonmembers)} rows of split 'holdout'",
                         "seed": seed, "tier": config.tier,
                         **{k: v for k, v in settings.items() if k != "seed"}}
        return result

    # --- data -----------------------------------------------------------------------------

    def _audit_sets(self, subject: Subject, samples: int | None,
                    seed: int) -> tuple[Split, Split]:
        train, holdout = subject.split("train"), subject.split("holdout")
        check_disjoint(train.rows, holdout.rows)
        rng = np.random.default_rng(seed)
        member_pool = training_rows(train, subject.task)
        nonmember_pool = training_rows(holdout, subject.task)
        n = min(len(member_pool), len(nonmember_pool), samples or len(nonmember_pool))
        if n < 10:
            raise ConfigError(f"only {n} members/non-members available for {subject.name}: "
                              "membership inference needs at least 10 of each")
        pick = lambda pool: np.sort(rng.choice(pool, n, replace=False))  # noqa: E731
        return _take(train, pick(member_pool)), _take(holdout, pick(nonmember_pool))

    def _write_rows(self, config: AuditConfig, result: AuditResult, subject: Subject,
                    members: Split, nonmembers: Split) -> None:
        path, artifact = config.artifact("membership_rows.json", "table",
                                         "source row ids of the audited members (train split) "
                                         "and non-members (holdout split)")
        path.write_text(json.dumps({"dataset": subject.data.name,
                                    "members": {"split": "train",
                                                "rows": members.rows.tolist()},
                                    "nonmembers": {"split": "holdout",
                                                   "rows": nonmembers.rows.tolist()}}))
        result.artifacts.append(artifact)

    # --- attacks --------------------------------------------------------------------------

    def _references(self, subject: Subject, X: np.ndarray, y: np.ndarray, n_models: int,
                    settings: dict, seed: int, config: AuditConfig):
        recipe = RecipeSettings.from_meta(subject.meta.get("training", {}),
                                          settings["max_epochs"])
        return train_reference_models(subject.arch, input_spec_for(subject.data), X, y,
                                      n_models=n_models, config=subject.meta.get("config"),
                                      recipe=recipe, task=subject.task, seed=seed + 1,
                                      show_progress=config.show_progress)

    def _classifier_attacks(self, subject: Subject, X: np.ndarray, y: np.ndarray,
                            is_member: np.ndarray, settings: dict, seed: int,
                            config: AuditConfig, result: AuditResult) -> dict[str, np.ndarray]:
        model = subject.clean_model()
        logits = check_logits(subject.logits(X), y)
        scores = {"loss_threshold": loss_scores(logits, y),
                  "confidence_threshold": confidence_scores(logits, y)}
        classifier = art_classifier(model, tuple(subject.data.input_shape),
                                    subject.data.n_classes)
        scores["art_blackbox"] = art_blackbox_scores(classifier, X, y, is_member, logits=logits,
                                                     seed=seed)
        key = "image_reference_models" if subject.modality == "image" else "reference_models"
        n_models = int(config.params.get("reference_models", settings[key]))
        if n_models < 2:
            result.add_finding("info", f"reference-model attacks (LiRA, RMIA, shadow) skipped "
                               f"at tier {config.tier!r} for {subject.modality} models; run the "
                               "full tier or set reference_models >= 2")
            return scores
        refs = self._references(subject, X, y, n_models, settings, seed, config)
        reference_logits = refs.outputs(X)
        z = _sample(subject.split("test"), settings["population_z"], seed)
        scores.update(reference_attack_scores(logits, reference_logits, refs.masks, y,
                                              subject.logits(z.X), refs.outputs(z.X), z.y))
        scores["shadow"] = shadow_attack_scores(reference_logits, refs.masks, y, logits, y,
                                                seed=seed)
        return scores

    def _autoencoder_attacks(self, subject: Subject, X: np.ndarray, is_member: np.ndarray,
                             settings: dict, seed: int,
                             config: AuditConfig) -> dict[str, np.ndarray]:
        reconstructions = subject.logits(X)
        scores = {"reconstruction_threshold": reconstruction_scores(reconstructions, X)}
        n_models = int(settings["reference_models"])
        if n_models >= 2:
            refs = self._references(subject, X, np.zeros(len(X), np.int64), n_models, settings,
                                    seed, config)
            target = reconstruction_statistic(reconstructions, X)
            reference = reconstruction_statistic(refs.outputs(X), X)
            scores["lira"] = lira_scores(target, reference, refs.masks, online=True)
            scores["lira_offline"] = lira_scores(target, reference, refs.masks, online=False)
        return scores

    # --- reporting ------------------------------------------------------------------------

    def _record(self, result: AuditResult, attack: str, metrics: MIAMetrics) -> None:
        result.add_metric(f"{attack}.auc", metrics.auc, metrics.auc_ci)
        result.add_metric(f"{attack}.balanced_accuracy", metrics.balanced_accuracy)
        result.add_metric(f"{attack}.advantage", metrics.advantage)
        for fpr, rate in metrics.at_fpr.items():
            result.add_metric(f"{attack}.tpr_at_{fpr:g}_fpr", rate.tpr, rate.ci)
            if rate.ci[0] > fpr and attack == STRONGEST:
                result.add_finding("medium", f"{attack}: {rate.tpr:.1%} of members identified "
                                   f"at {fpr:g} FPR (95% CI from {rate.ci[0]:.1%}): the model "
                                   "leaks who was in its training set",
                                   f"{self.name}.{attack}.tpr_at_{fpr:g}_fpr")

    def _roc_plot(self, config: AuditConfig, result: AuditResult,
                  graded: dict[str, MIAMetrics]) -> None:
        import plotly.graph_objects as go

        figure = go.Figure()
        for attack, metrics in graded.items():
            keep = metrics.roc_fpr > 0
            figure.add_trace(go.Scatter(x=metrics.roc_fpr[keep], y=metrics.roc_tpr[keep],
                                        mode="lines", name=f"{attack} (AUC {metrics.auc:.3f})"))
        figure.add_trace(go.Scatter(x=[1e-4, 1], y=[1e-4, 1], mode="lines", name="chance",
                                    line={"dash": "dash", "color": "gray"}))
        figure.update_layout(title="Membership inference ROC (log–log)",
                             xaxis={"type": "log", "title": "false positive rate"},
                             yaxis={"type": "log", "title": "true positive rate"})
        path, artifact = config.artifact("mia_roc.json", "plot",
                                         "ROC curves of every membership attack, log–log axes")
        figure.write_json(str(path))
        result.artifacts.append(artifact)

    def _groups(self, result: AuditResult, scores: np.ndarray, is_member: np.ndarray,
                members: Split, nonmembers: Split, attack: str) -> None:
        if members.sensitive.empty or len(nonmembers) < min_nonmembers(0.01):
            return
        for column in members.sensitive.columns:
            groups = np.r_[members.sensitive[column].to_numpy(),
                           nonmembers.sensitive[column].to_numpy()]
            for group, row in group_tpr_at_fpr(scores, is_member, groups, 0.01).items():
                result.add_metric(f"{attack}.{_metric_part(column)}.{_metric_part(group)}"
                                  ".tpr_at_0.01_fpr", row["tpr"], row["ci"])

    def _exposed(self, config: AuditConfig, result: AuditResult, scores: np.ndarray,
                 is_member: np.ndarray, rows: np.ndarray, y: np.ndarray, members: Split,
                 attack: str) -> None:
        member_index = np.flatnonzero(is_member)
        top = member_index[np.argsort(-scores[member_index])[:EXPOSED]]
        table = [{"row": int(rows[i]), "label": int(y[i]), "score": float(scores[i]),
                  **({k: str(v) for k, v in members.sensitive.iloc[i].items()}
                     if not members.sensitive.empty else {})} for i in top]
        path, artifact = config.artifact("most_exposed.json", "table",
                                         f"the {EXPOSED} members {attack} is surest about")
        path.write_text(json.dumps({"attack": attack, "examples": table}, indent=1))
        result.artifacts.append(artifact)

    def _epsilon(self, subject: Subject, result: AuditResult, scores: np.ndarray,
                 is_member: np.ndarray, attack: str) -> None:
        privacy = subject.privacy or {}
        delta = float(privacy.get("delta", 0.0) or 0.0)
        bound = epsilon_lower_bound(scores, is_member, delta=delta)
        result.add_metric("empirical_epsilon", bound.epsilon)
        result.add_finding("info", f"empirical ε ≥ {bound.epsilon:.3f} at 95% confidence "
                           f"({bound.correct}/{bound.guesses} correct {attack} guesses on "
                           f"{bound.canaries} audited examples, one-run audit with δ={delta:g}; "
                           "the random train/holdout split plays the canaries' coin flips)",
                           f"{self.name}.empirical_epsilon")
        if "epsilon" not in privacy:
            return
        claimed = float(privacy["epsilon"])
        result.add_metric("claimed_epsilon", claimed)
        if bound.epsilon > claimed:
            result.status = "failed"
            result.add_finding("high", f"empirical ε̂ = {bound.epsilon:.3f} exceeds the claimed "
                               f"ε = {claimed:g}: the DP implementation has a bug or leaks",
                               f"{self.name}.empirical_epsilon")

    # --- inversion and attribute inference ----------------------------------------------------

    def _inversion(self, subject: Subject, config: AuditConfig, result: AuditResult,
                   settings: dict, seed: int) -> None:
        """Class representatives from the model, graded by a logistic regression trained on the
        test split only (independent of the model and its training rows)."""
        from sklearn.linear_model import LogisticRegression

        test, train = subject.split("test"), subject.split("train")
        n_classes, shape = subject.data.n_classes, tuple(subject.data.input_shape)
        evaluator = LogisticRegression(max_iter=2000).fit(test.X.reshape(len(test), -1), test.y)
        means = np.stack([train.X[train.y == k].mean(0) for k in range(n_classes)])
        rows = {"class means (train)": means}
        rows["regularised"] = regularised_inversion(subject.clean_model(), n_classes, shape,
                                                    steps=int(settings["inversion_steps"]),
                                                    seed=seed)
        if settings["miface_iter"]:
            low, high = subject.data.value_range
            classifier = art_classifier(subject.clean_model(), shape, n_classes, (low, high))
            rows["miface"] = miface(classifier, n_classes, shape,
                                    max_iter=int(settings["miface_iter"]))
        for method, images in list(rows.items())[1:]:
            quality = inversion_quality(evaluator.predict, images, means)
            result.add_metric(f"inversion.{method}.eval_accuracy", quality.eval_accuracy)
            result.add_metric(f"inversion.{method}.distance_to_class_mean",
                              quality.mean_distance)
            result.add_metric(f"inversion.{method}.grey_distance_to_class_mean",
                              quality.baseline_distance)
        path, artifact = config.artifact("inversion.png", "image",
                                         "rows: true class means, then each inversion's "
                                         "reconstruction of every class")
        image_grid(rows, path)
        result.artifacts.append(artifact)

    def _attributes(self, subject: Subject, result: AuditResult, members: Split,
                    seed: int) -> None:
        classifier = art_classifier(subject.clean_model(), tuple(subject.data.input_shape),
                                    subject.data.n_classes)
        for attribute in subject.data.features.sensitive:
            if attribute not in subject.data.features.groups:
                continue
            leak = attribute_inference(classifier, members.X, members.y,
                                       attribute_columns(subject.data.features.groups,
                                                         attribute), attribute, seed=seed)
            part = _metric_part(attribute)
            result.add_metric(f"attribute.{part}.attack_accuracy", leak.attack_accuracy)
            result.add_metric(f"attribute.{part}.baseline_accuracy", leak.baseline_accuracy)
            result.add_metric(f"attribute.{part}.advantage", leak.advantage)
            if leak.advantage > 0.05:
                result.add_finding("medium", f"the model's outputs raise the accuracy of "
                                   f"guessing {attribute} from {leak.baseline_accuracy:.1%} to "
                                   f"{leak.attack_accuracy:.1%}",
                                   f"{self.name}.attribute.{part}.advantage")


def _take(split: Split, index: np.ndarray) -> Split:
    return Split(X=split.X[index], y=split.y[index],
                 sensitive=split.sensitive.iloc[index].reset_index(drop=True),
                 rows=split.rows[index],
                 frame=None if split.frame is None else split.frame.iloc[index])


def _sample(split: Split, n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed + 2)
    return _take(split, np.sort(rng.choice(len(split), min(n, len(split)), replace=False)))
