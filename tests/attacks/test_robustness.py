"""The robustness auditor end to end: smoke tier on the digits CNN, the gradient-masking checks
on a deliberately masked model, and recorded failures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trustlab.audit.auditors.robustness as robustness
from trustlab.audit.runner import audit
from trustlab.train.subject import Subject

MASKING = "robustness.masking."


class Quantise(nn.Module):
    """Rounds pixels to 4 levels: torch.round has zero gradient, so PGD sees nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def _audit(subject: Subject, **params):
    report = audit(subject, auditors=["robustness"], tier="smoke", show_progress=False,
                   params={"robustness": params} if params else None)
    return report.results[0]


@pytest.fixture(scope="module")
def standard(digits_cnn):
    return _audit(digits_cnn)


def test_smoke_audit_of_the_digits_cnn(standard):
    assert standard.status == "passed", standard.error
    m = standard.metrics
    clean = m["robustness.clean_accuracy"].value
    curve = [m[f"robustness.pgd_linf.eps_{e}.robust_accuracy"].value
             for e in ("0p05", "0p1", "0p2", "0p3")]
    assert clean > 0.9 and curve[0] <= clean and curve[-1] < 0.2
    metric = m["robustness.pgd_linf.eps_0p1.robust_accuracy"]
    assert metric.ci_low <= metric.value <= metric.ci_high
    assert "robustness.per_class.3.robust_accuracy" in m
    assert any(a.kind == "plot" for a in standard.artifacts)


def test_masking_checks_pass_on_the_standard_model(standard):
    checks = {k: v.value for k, v in standard.metrics.items() if k.startswith(MASKING)}
    assert len(checks) >= 4 and all(v == 1.0 for v in checks.values()), checks
    assert not [f for f in standard.findings if "masking" in f.message]


def test_masking_checks_fire_on_a_quantised_model(digits_cnn):
    masked = Subject("digits-cnn-quantised", nn.Sequential(Quantise(), digits_cnn.clean_model()),
                     digits_cnn.data, digits_cnn.meta)
    result = _audit(masked)
    assert result.status == "passed", result.error
    assert result.metrics[MASKING + "unbounded_attack_succeeds"].value == 0.0
    assert result.metrics[MASKING + "blackbox_not_stronger"].value == 0.0
    assert sum("gradient masking suspected" in f.message for f in result.findings) >= 2


def test_a_failing_attack_is_recorded_and_the_others_run(digits_cnn, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated attack failure")

    monkeypatch.setattr(robustness.ev, "fgsm", broken)
    result = _audit(digits_cnn)
    assert result.metrics["robustness.fgsm.errored"].value == 1.0
    assert any("fgsm errored" in f.message and "simulated" in f.message for f in result.findings)
    assert "robustness.pgd_linf.eps_0p1.robust_accuracy" in result.metrics
    assert "robustness.square.eps_0p1.robust_accuracy" in result.metrics


def test_eps_outside_the_data_range_is_a_clear_error(digits_cnn):
    result = _audit(digits_cnn, eps=[0.1, 2.0])
    assert result.status == "errored"
    assert "outside the data range" in result.error


def test_tabular_audit_reports_robustness_by_sensitive_group(adult_mlp):
    result = _audit(adult_mlp)
    assert result.status == "passed", result.error
    assert any(k.startswith("robustness.by_group.sex.") for k in result.metrics)
    assert "robustness.pgd_linf.eps_0p25.robust_accuracy" in result.metrics


def _robust_accuracy(model, subject, attack, eps=0.1):
    from trustlab.attacks.art_adapter import input_domain
    from trustlab.attacks.autoattack import autoattack
    from trustlab.attacks.evasion import evaluate_attack, make_threat, pgd

    test = subject.split("test")
    threat = make_threat(input_domain(subject.data), eps)
    if attack == "autoattack":
        return autoattack(model, test.X, test.y, subject.data, threat).robust_accuracy
    # 5 restarts: one start leaves the standard CNN ~3 points above AutoAttack (0.636 vs 0.606)
    X_adv = pgd(model, test.X, test.y, threat, steps=40, restarts=5)
    return evaluate_attack(model, test.X, test.y, X_adv).robust_accuracy


@pytest.fixture(scope="module")
def standard_and_robust(digits_cnn):
    """The default ``train("cnn", "digits")`` and ``train_adversarial("cnn", "digits")`` with its
    defaults (both on the fixture's data, seed 0)."""
    from trustlab.attacks.defences import train_adversarial
    from trustlab.train.trainer import train

    data = digits_cnn.data
    standard = train("cnn", "digits", data=data, show_progress=False)
    robust = train_adversarial("cnn", "digits", data=data, show_progress=False)
    return [Subject.from_trained(t, name) for t, name in ((standard, "standard"),
                                                          (robust, "robust"))]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # trains a wide CNN 40 epochs against 10-step PGD
def test_adversarial_training_raises_pgd_accuracy_by_30_points(standard_and_robust):
    standard, robust = (_robust_accuracy(s.clean_model(), s, "pgd") for s in standard_and_robust)
    assert robust - standard >= 0.30, (standard, robust)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # trains a wide CNN 40 epochs against 10-step PGD
def test_adversarial_training_gain_is_not_gradient_masking(standard_and_robust):
    """AutoAttack (with the gradient-free Square) keeps most of the PGD gain."""
    standard, robust = (_robust_accuracy(s.clean_model(), s, "autoattack")
                        for s in standard_and_robust)
    assert robust - standard >= 0.25, (standard, robust)


def test_masking_checks_catch_defensive_distillation(digits_cnn):
    from trustlab.attacks.defences import defensive_distillation

    student = defensive_distillation(digits_cnn.clean_model(), "cnn", digits_cnn.data)
    distilled = Subject("digits-cnn-distilled", student, digits_cnn.data, digits_cnn.meta)
    result = _audit(distilled)
    failed = [k for k, v in result.metrics.items() if k.startswith(MASKING) and v.value == 0.0]
    assert failed, {k: v.value for k, v in result.metrics.items()}
