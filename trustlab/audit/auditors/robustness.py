"""The robustness auditor: evasion (white- and black-box), gradient-masking checks, certified
robustness, backdoor poisoning and defences, adapted from :mod:`trustlab.attacks` to a report.

Metric names carry ε as ``eps_0p1`` (0.1): ``robustness.pgd_linf.eps_0p1.robust_accuracy``,
``robustness.autoattack.eps_0p1.robust_accuracy``, ``robustness.certified.r_0p25.accuracy`` …
Every robust accuracy has a Clopper–Pearson interval over the attacked sample. A sub-analysis
that fails is recorded as ``<name>.errored = 1`` plus a finding, and the others still run.
"""

from __future__ import annotations

import json
import re
import time
from typing import Callable

import numpy as np
import torch

from trustlab.attacks import autoattack as aa
from trustlab.attacks import evasion as ev
from trustlab.attacks.art_adapter import input_domain, require_classifier, require_gradients
from trustlab.attacks.defences import (adversarial_detector, defensive_distillation,
                                       detection_rates)
from trustlab.attacks.masking import gradient_masking_checks
from trustlab.attacks.poisoning import backdoor_audit
from trustlab.attacks.smoothing import certify
from trustlab.audit.report import AuditResult
from trustlab.audit.runner import AuditConfig, register_auditor
from trustlab.errors import ConfigError
from trustlab.stats import clopper_pearson
from trustlab.train.subject import Subject
from trustlab.train.trainer import predict

DEFAULT_EPS = {"image": [0.05, 0.1, 0.2, 0.3], "tabular": [0.1, 0.25, 0.5, 1.0]}
BUDGETS = {  # per tier: points attacked and attack strengths (smoke ≤ ~8 s per model)
    "smoke": {"points": {"image": 64, "tabular": 128}, "pgd_steps": 10, "pgd_restarts": 1,
              "square_queries": 100,
              "apgd_iter": 0, "minimal_points": 0, "hsj_points": 0, "smoothing_points": 0,
              "backdoor_epochs": 0, "detector": False, "distillation": False},
    "full": {"points": {"image": 400, "tabular": 1000}, "pgd_steps": 40, "pgd_restarts": 5,
             "square_queries": 1000,
             "apgd_iter": 100, "minimal_points": 100, "hsj_points": 30, "smoothing_points": 200,
             "backdoor_epochs": 8, "detector": True, "distillation": True},
}
PARAMS = {"eps", "headline_eps", "points", "immutable", "sigma", "smoothing_n",
          "backdoor_target", "backdoor_fraction", "distillation_temperature", *BUDGETS["full"]}


def eps_name(value: float) -> str:
    """``0.1`` → ``eps_0p1`` (a metric-name part without a dot)."""
    return "eps_" + f"{value:g}".replace(".", "p").replace("-", "m")


def _slug(value: object) -> str:
    return re.sub(r"[^A-Za-z0-9_\-<>=+]", "_", str(value).strip()) or "_"


@register_auditor
class RobustnessAuditor:
    """Robust accuracy vs ε (PGD, AutoAttack), FGSM, C&W/DeepFool minimal perturbations,
    black-box Square/HopSkipJump, per-class and per-group robustness, the gradient-masking
    checklist, randomised-smoothing certificates, a backdoor audit and two defences."""

    name = "robustness"

    def applies_to(self, subject: Subject) -> bool:
        return subject.task == "classification"

    def run(self, subject: Subject, config: AuditConfig) -> AuditResult:
        require_classifier(subject.task, "the robustness audit")
        unknown = set(config.params) - PARAMS
        if unknown:
            raise ConfigError(f"unknown robustness parameter(s) {sorted(unknown)}; allowed: "
                              f"{sorted(PARAMS)}")
        budget = {**BUDGETS[config.tier], **{k: v for k, v in config.params.items()
                                             if k in BUDGETS["full"]}}
        run = _Run(subject, config, budget, AuditResult(self.name))
        run.execute()
        return run.result


class _Run:
    """One audit: the sample, the threats, and one method per sub-analysis."""

    def __init__(self, subject: Subject, config: AuditConfig, budget: dict,
                 result: AuditResult) -> None:
        params, modality = config.params, subject.modality
        self.subject, self.config, self.budget, self.result = subject, config, budget, result
        self.data = subject.data
        self.domain = input_domain(self.data, params.get("immutable"))
        self.eps = sorted(float(e) for e in params.get("eps", DEFAULT_EPS[modality]))
        self.threats = {e: ev.make_threat(self.domain, e, "inf") for e in self.eps}  # validates ε
        self.headline = float(params.get("headline_eps", self.eps[min(1, len(self.eps) - 1)]))
        if self.headline not in self.threats:
            raise ConfigError(f"headline_eps {self.headline} must be one of eps {self.eps}")
        test = subject.split("test")
        n = int(params.get("points", budget["points"][modality]))
        rng = np.random.default_rng(config.seed)
        self.rows = np.sort(rng.choice(len(test), size=min(n, len(test)), replace=False))
        self.X, self.y = test.X[self.rows], test.y[self.rows]
        self.model = subject.clean_model()
        self.clean_pred = predict(self.model, self.X).argmax(1)
        self.pgd_curve: dict[float, float] = {}
        self.outcomes: dict[str, ev.AttackOutcome] = {}
        self.masking_inputs: dict[str, float] = {}

    # --- plumbing ---------------------------------------------------------------------------

    def execute(self) -> None:
        self.result.add_metric("points", len(self.y))
        self._rate("clean_accuracy", self.clean_pred == self.y)
        white_box = self._section("gradients", lambda: require_gradients(self.model, self.X))
        steps: list[tuple[str, Callable[[], None], bool]] = [
            ("pgd_linf", self._pgd_curve, white_box),
            ("fgsm", self._fgsm, white_box),
            ("pgd_linf_more_steps", self._more_steps, white_box and self.budget["apgd_iter"] > 0),
            ("pgd_linf_large_eps", self._large_eps, white_box),
            ("pgd_l2", self._pgd_l2, white_box and self.budget["apgd_iter"] > 0),
            ("autoattack", self._autoattack, white_box and self.budget["apgd_iter"] > 0),
            ("square", self._square, self.subject.modality == "image"),
            ("hopskipjump", self._hopskipjump, self.budget["hsj_points"] > 0),
            ("cw", lambda: self._minimal("cw"), white_box and self.budget["minimal_points"] > 0),
            ("deepfool", lambda: self._minimal("deepfool"),
             white_box and self.budget["minimal_points"] > 0),
            ("by_group", self._by_group, white_box),
            ("masking", self._masking, True),
            ("certified", self._certified, self.budget["smoothing_points"] > 0),
            ("backdoor", self._backdoor,
             self.budget["backdoor_epochs"] > 0 and self.subject.modality == "image"),
            ("detector", self._detector, bool(self.budget["detector"]) and white_box),
            ("distillation", self._distillation,
             bool(self.budget["distillation"]) and white_box and self.subject.modality == "image"),
        ]
        for name, step, enabled in steps:
            if enabled:
                self._section(name, step)
        self._plot()

    def _section(self, name: str, step: Callable[[], None]) -> bool:
        started = time.perf_counter()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - one failing attack must not stop the audit
            self.result.add_metric(f"{name}.errored", 1.0)
            self.result.add_finding("medium", f"{name} errored ({type(exc).__name__}: {exc}); "
                                    "the other analyses still ran", f"robustness.{name}.errored")
            return False
        self.result.config.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 2)
        return True

    def _rate(self, name: str, hits: np.ndarray) -> float:
        k, n = int(np.sum(hits)), len(hits)
        self.result.add_metric(name, k / n if n else float("nan"), clopper_pearson(k, n))
        return k / n if n else float("nan")

    def _score(self, key: str, X_adv: np.ndarray, norm: str = "inf", X=None, y=None) -> ev.AttackOutcome:
        X = self.X if X is None else X
        y = self.y if y is None else y
        clean = self.clean_pred if len(y) == len(self.y) else None
        outcome = ev.evaluate_attack(self.model, X, y, X_adv, norm=norm, clean_predictions=clean)
        self.outcomes[key] = outcome
        return outcome

    # --- evasion ----------------------------------------------------------------------------

    def _pgd_curve(self) -> None:
        for eps, threat in self.threats.items():
            X_adv = ev.pgd(self.model, self.X, self.y, threat, steps=self.budget["pgd_steps"],
                           restarts=self.budget["pgd_restarts"], seed=self.config.seed)
            outcome = self._score(f"pgd_linf@{eps}", X_adv)
            self.pgd_curve[eps] = self._rate(f"pgd_linf.{eps_name(eps)}.robust_accuracy",
                                             outcome.robust)
            self.result.add_metric(f"pgd_linf.{eps_name(eps)}.success_rate", outcome.success_rate)
        self.outcomes["pgd_linf"] = self.outcomes[f"pgd_linf@{self.headline}"]

    def _fgsm(self) -> None:
        outcome = self._score("fgsm", ev.fgsm(self.model, self.X, self.y, self.threats[self.headline]))
        self.masking_inputs["fgsm"] = self._rate(f"fgsm.{eps_name(self.headline)}.robust_accuracy",
                                                 outcome.robust)

    def _more_steps(self) -> None:
        X_adv = ev.pgd(self.model, self.X, self.y, self.threats[self.headline],
                       steps=10 * self.budget["pgd_steps"], seed=self.config.seed)
        self.masking_inputs["more_steps"] = self._rate(
            f"pgd_linf_more_steps.{eps_name(self.headline)}.robust_accuracy",
            self._score("more_steps", X_adv).robust)

    def _large_eps(self) -> None:
        threat = ev.make_threat(self.domain, self.domain.span, "inf")
        X_adv = ev.pgd(self.model, self.X, self.y, threat, steps=self.budget["pgd_steps"],
                       random_init=False)
        self.masking_inputs["large_eps"] = self._rate("pgd_linf_large_eps.robust_accuracy",
                                                      self._score("large_eps", X_adv).robust)

    def _pgd_l2(self) -> None:
        scale = float(np.sqrt(self.domain.n_mutable))  # an L2 ball as wide as the L∞ one on avg
        for eps in self.eps:
            threat = ev.make_threat(self.domain, eps * scale / 2, "2")
            X_adv = ev.pgd(self.model, self.X, self.y, threat, steps=self.budget["pgd_steps"],
                           restarts=2, seed=self.config.seed)
            self._rate(f"pgd_l2.{eps_name(round(threat.eps, 4))}.robust_accuracy",
                       self._score(f"pgd_l2@{eps}", X_adv, "2").robust)

    def _autoattack(self) -> None:
        stages = {}
        for eps, threat in self.threats.items():
            outcome = aa.autoattack(self.model, self.X, self.y, self.data, threat,
                                    n_iter=self.budget["apgd_iter"],
                                    square_queries=self.budget["square_queries"],
                                    seed=self.config.seed)
            self._rate(f"autoattack.{eps_name(eps)}.robust_accuracy", outcome.robust)
            stages[eps_name(eps)] = outcome.stages
        path, artifact = self.config.artifact("autoattack_stages.json", "table",
                                              "AutoAttack: robust accuracy after each component")
        path.write_text(json.dumps(stages, indent=2))
        self.result.artifacts.append(artifact)

    def _square(self) -> None:
        threat = self.threats[self.headline]
        generator = torch.Generator().manual_seed(self.config.seed)
        X_adv, _ = aa.square_linf(self.model, torch.from_numpy(self.X), torch.from_numpy(self.y),
                                  threat, n_queries=self.budget["square_queries"],
                                  generator=generator)
        self.masking_inputs["blackbox"] = self._rate(
            f"square.{eps_name(self.headline)}.robust_accuracy",
            self._score("square", X_adv.numpy()).robust)

    def _hopskipjump(self) -> None:
        n = self.budget["hsj_points"]
        X, y = self.X[:n], self.y[:n]
        X_adv = ev.hopskipjump(self.model, X, y, self.data, self.threats[self.headline],
                               seed=self.config.seed)
        accuracy = self._rate(f"hopskipjump.{eps_name(self.headline)}.robust_accuracy",
                              self._score("hopskipjump", X_adv, X=X, y=y).robust)
        if self.subject.modality != "image":
            self.masking_inputs["blackbox"] = accuracy

    def _minimal(self, name: str) -> None:
        n = self.budget["minimal_points"]
        X, y = self.X[:n], self.y[:n]
        attack = ev.carlini_wagner if name == "cw" else ev.deepfool
        X_adv = attack(self.model, X, y, self.data, self.domain)
        outcome = self._score(name, X_adv, "2", X=X, y=y)
        self.result.add_metric(f"{name}.success_rate", outcome.success_rate)
        self.result.add_metric(f"{name}.mean_minimal_l2", outcome.mean_minimal_perturbation())

    def _by_group(self) -> None:
        outcome = self.outcomes.get("pgd_linf")
        if outcome is None:
            return
        for label in np.unique(self.y):
            self._rate(f"per_class.{_slug(self.data.classes[label])}.robust_accuracy",
                       outcome.robust[self.y == label])
        sensitive = self.subject.split("test").sensitive
        for attribute in self.data.features.sensitive:
            values = sensitive[attribute].to_numpy()[self.rows]
            accuracy = {v: self._rate(f"by_group.{_slug(attribute)}.{_slug(v)}.robust_accuracy",
                                      outcome.robust[values == v]) for v in np.unique(values)}
            gap = max(accuracy.values()) - min(accuracy.values())
            self.result.add_metric(f"by_group.{_slug(attribute)}.robust_accuracy_gap", gap)
            if gap > 0.1:
                self.result.add_finding("medium", f"robust accuracy at ε={self.headline:g} differs "
                                        f"by {gap:.3f} across {attribute} groups: some groups are "
                                        "easier to manipulate", f"robustness.by_group.{_slug(attribute)}"
                                        ".robust_accuracy_gap")

    # --- checks and certificates ------------------------------------------------------------

    def _masking(self, prefix: str = "masking", curve: dict | None = None,
                 inputs: dict | None = None) -> list:
        curve = self.pgd_curve if curve is None else curve
        inputs = self.masking_inputs if inputs is None else inputs
        if not curve:
            self.result.add_finding("high", "no white-box attack ran, so robustness rests on "
                                    "black-box attacks only")
            return []
        checks = gradient_masking_checks(
            curve, large_eps_accuracy=inputs.get("large_eps"),
            blackbox_accuracy=inputs.get("blackbox"), whitebox_accuracy=curve.get(self.headline),
            fgsm_accuracy=inputs.get("fgsm"), more_steps_accuracy=inputs.get("more_steps"))
        for check in checks:
            self.result.add_metric(f"{prefix}.{check.name}", float(check.passed))
            if not check.passed:
                self.result.add_finding("high", f"gradient masking suspected ({check.name}): "
                                        f"{check.message}", f"robustness.{prefix}.{check.name}")
        return checks

    def _certified(self) -> None:
        n = self.budget["smoothing_points"]
        sigma = float(self.config.params.get("sigma", 0.25))
        cert = certify(self.model, self.X[:n], sigma=sigma, n_classes=self.data.n_classes,
                       n=int(self.config.params.get("smoothing_n", 500)), seed=self.config.seed)
        self.certificate = cert
        for radius in (0.0, 0.25, 0.5):
            value, ci = cert.certified_accuracy(self.y[:n], radius)
            self.result.add_metric(f"certified.{eps_name(radius).replace('eps', 'r')}.accuracy",
                                   value, ci)
        self.result.add_metric("certified.sigma", sigma)

    # --- poisoning and defences -------------------------------------------------------------

    def _backdoor(self) -> None:
        params = self.config.params
        report = backdoor_audit(self.subject.arch, self.data, seed=self.config.seed,
                                target=int(params.get("backdoor_target", 0)),
                                fraction=float(params.get("backdoor_fraction", 0.1)),
                                epochs=self.budget["backdoor_epochs"])
        for key in ("clean_accuracy", "attack_success_rate", "detector_precision",
                    "detector_recall"):
            self.result.add_metric(f"backdoor.{key}", getattr(report, key))
        if report.attack_success_rate > 0.5:
            self.result.add_finding("high", f"a trigger in {report.n_poisoned} of "
                                    f"{report.n_train} training images plants a backdoor with "
                                    f"attack success {report.attack_success_rate:.3f} at clean "
                                    f"accuracy {report.clean_accuracy:.3f}; activation clustering "
                                    f"finds them with precision {report.detector_precision:.3f}, "
                                    f"recall {report.detector_recall:.3f}",
                                    "robustness.backdoor.attack_success_rate")

    def _detector(self) -> None:
        train_split = self.subject.split("train")
        n = min(len(train_split), 600)
        threat = self.threats[self.headline]
        X_fit = train_split.X[:n]
        adv_fit = ev.pgd(self.model, X_fit, train_split.y[:n], threat, steps=10)
        detector = adversarial_detector(self.data, X_fit, adv_fit, epochs=10, seed=self.config.seed)
        X_adv = ev.pgd(self.model, self.X, self.y, threat, steps=self.budget["pgd_steps"],
                       seed=self.config.seed + 1)
        detected, false_positive = detection_rates(detector, self.X, X_adv)
        self.result.add_metric("detector.detection_rate", detected)
        self.result.add_metric("detector.false_positive_rate", false_positive)

    def _distillation(self) -> None:
        temperature = float(self.config.params.get("distillation_temperature", 100.0))
        student = defensive_distillation(self.model, self.subject.arch, self.data,
                                         temperature=temperature, seed=self.config.seed)
        clean = predict(student, self.X).argmax(1)
        self._rate("distillation.clean_accuracy", clean == self.y)
        curve, inputs = {}, {}
        for eps in sorted({self.headline, self.eps[-1]}):  # the checks need two points
            X_adv = ev.pgd(student, self.X, self.y, self.threats[eps],
                           steps=self.budget["pgd_steps"], seed=self.config.seed)
            outcome = ev.evaluate_attack(student, self.X, self.y, X_adv, clean_predictions=clean)
            curve[eps] = self._rate(f"distillation.pgd_linf.{eps_name(eps)}.robust_accuracy",
                                    outcome.robust)
        big = ev.make_threat(self.domain, self.domain.span, "inf")
        inputs["large_eps"] = float(ev.evaluate_attack(
            student, self.X, self.y, ev.pgd(student, self.X, self.y, big, steps=10,
                                            random_init=False), clean_predictions=clean).robust.mean())
        generator = torch.Generator().manual_seed(self.config.seed)
        X_sq, _ = aa.square_linf(student, torch.from_numpy(self.X), torch.from_numpy(self.y),
                                 self.threats[self.headline],
                                 # a quarter of the budget: a weaker black-box attack that still
                                 # beats PGD is evidence enough (Square-250 0.65 vs PGD 0.98)
                                 n_queries=self.budget["square_queries"] // 4, generator=generator)
        inputs["blackbox"] = float(ev.evaluate_attack(student, self.X, self.y, X_sq.numpy(),
                                                      clean_predictions=clean).robust.mean())
        checks = self._masking("distillation.masking", curve, inputs)
        if all(c.passed for c in checks):
            self.result.add_finding("info", f"defensive distillation (T={temperature:g}) passed the "
                                    "gradient-masking checks")

    # --- picture ----------------------------------------------------------------------------

    def _plot(self) -> None:
        import plotly.graph_objects as go

        fig = go.Figure()
        for label, prefix in (("PGD L∞", "pgd_linf"), ("AutoAttack L∞", "autoattack")):
            points = [(e, self.result.metrics.get(f"robustness.{prefix}.{eps_name(e)}.robust_accuracy"))
                      for e in self.eps]
            points = [(e, m) for e, m in points if m is not None]
            if points:
                fig.add_scatter(x=[0.0] + [e for e, _ in points],
                                y=[self.result.metrics["robustness.clean_accuracy"].value]
                                + [m.value for _, m in points],
                                error_y={"type": "data", "symmetric": False,
                                         "array": [0] + [m.ci_high - m.value for _, m in points],
                                         "arrayminus": [0] + [m.value - m.ci_low for _, m in points]},
                                mode="lines+markers", name=label)
        unit = "pixel units" if self.subject.modality == "image" else "standard deviations"
        fig.update_layout(title=f"{self.subject.name}: robust accuracy vs ε",
                          xaxis_title=f"L∞ ε ({unit})", yaxis_title="robust accuracy",
                          yaxis_range=[0, 1])
        path, artifact = self.config.artifact("robust_accuracy_vs_eps.json", "plot",
                                              "robust accuracy vs ε (PGD, AutoAttack)")
        fig.write_json(str(path))
        self.result.artifacts.append(artifact)
