"""Gradient-masking checks (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial
robustness"): symptoms that a white-box evaluation is fooled by the model, not the other way
round. Each check compares robust accuracies the audit already measured; a failed check means
the reported robustness is not trustworthy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MaskingCheck:
    """One checklist item: whether it passed and the evidence, in words."""

    name: str
    passed: bool
    message: str


def gradient_masking_checks(curve: dict[float, float], *, large_eps_accuracy: float | None = None,
                            blackbox_accuracy: float | None = None,
                            whitebox_accuracy: float | None = None,
                            fgsm_accuracy: float | None = None,
                            more_steps_accuracy: float | None = None,
                            tolerance: float = 0.03, floor: float = 0.05) -> list[MaskingCheck]:
    """Run the checklist on measured robust accuracies (values in [0, 1]).

    ``curve``: ε → white-box (PGD) robust accuracy. ``large_eps_accuracy``: PGD at an ε that
    covers the whole input range (must reach ≤ ``floor``). ``blackbox_accuracy`` and
    ``fgsm_accuracy`` must not undercut ``whitebox_accuracy`` (PGD at the same ε) by more than
    ``tolerance``; ``more_steps_accuracy`` (PGD with 10× the steps) must not exceed it.
    Checks whose inputs are missing are left out.
    """
    checks = []
    eps = sorted(curve)
    rises = [(a, b) for a, b in zip(eps, eps[1:]) if curve[b] > curve[a] + tolerance]
    checks.append(MaskingCheck(
        "monotone_in_eps", not rises,
        "robust accuracy falls as ε grows" if not rises else
        "robust accuracy rises with ε: " + ", ".join(f"{curve[a]:.3f} at ε={a:g} → {curve[b]:.3f} "
                                                     f"at ε={b:g}" for a, b in rises)))
    if large_eps_accuracy is not None:
        checks.append(MaskingCheck(
            "unbounded_attack_succeeds", large_eps_accuracy <= floor,
            f"PGD with ε covering the whole input range leaves {large_eps_accuracy:.3f} accuracy"
            + ("" if large_eps_accuracy <= floor else
               f" (> {floor}): an unbounded attack must reach ~0, so gradients are masked")))
    if whitebox_accuracy is not None:
        for name, other, label in (("blackbox_not_stronger", blackbox_accuracy, "black-box Square"),
                                   ("iterative_beats_single_step", fgsm_accuracy, "single-step FGSM")):
            if other is None:
                continue
            ok = other >= whitebox_accuracy - tolerance
            checks.append(MaskingCheck(
                name, ok, f"{label} leaves {other:.3f} vs PGD {whitebox_accuracy:.3f}"
                + ("" if ok else ": it beats the white-box attack, so gradients mislead PGD")))
        if more_steps_accuracy is not None:
            ok = more_steps_accuracy <= whitebox_accuracy + tolerance
            checks.append(MaskingCheck(
                "more_steps_do_not_help", ok,
                f"PGD with 10× the steps leaves {more_steps_accuracy:.3f} vs {whitebox_accuracy:.3f}"
                + ("" if ok else ": more steps helped the model, so the attack is not converging")))
    return checks
