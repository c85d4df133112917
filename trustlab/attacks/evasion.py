"""White- and black-box evasion attacks under one threat model.

Our own batched torch PGD (L∞ and L2, random restarts; FGSM is its one-step case) is the
workhorse: it is tested against ART's ``ProjectedGradientDescent`` on the same model and config.
Carlini–Wagner L2, DeepFool, Square and HopSkipJump are ART's implementations, run through
:func:`trustlab.attacks.art_adapter.art_classifier`. Every attack returns adversarial inputs of
the same shape as ``X``; :func:`evaluate_attack` turns them into robust accuracy, success rate
and perturbation sizes.

Tabular realism: every attack perturbs only the mutable features of its
:class:`~trustlab.attacks.art_adapter.InputDomain` and stays inside their observed ranges. Our
attacks and HopSkipJump enforce this while they search; C&W and DeepFool, which ART runs without
a feature mask, have their result projected back onto the mutable features (a weaker but
realistic attack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trustlab.attacks.art_adapter import InputDomain, art_classifier
from trustlab.errors import ConfigError, TrustlabError
from trustlab.train.data import DataBundle
from trustlab.train.trainer import predict

NORMS = ("inf", "2")


@dataclass(frozen=True)
class Threat:
    """An ε-ball in L∞ or L2 intersected with the valid input box, on the mutable features."""

    eps: float
    norm: str
    domain: InputDomain

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(lower, upper, mask) as tensors shaped like one input, for broadcasting."""
        return tuple(torch.from_numpy(a).to(device) for a in
                     (self.domain.lower, self.domain.upper, self.domain.mask))


def make_threat(domain: InputDomain, eps: float, norm: str = "inf") -> Threat:
    """Validate ``eps`` and ``norm`` against the data's range and build the threat model."""
    norm = str(norm).lower().lstrip("l")
    if norm not in NORMS:
        raise ConfigError(f"norm must be 'inf' or '2', got {norm!r}")
    limit = domain.span if norm == "inf" else domain.span * math.sqrt(domain.n_mutable)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0 < eps <= limit):
        raise ConfigError(f"ε={eps!r} is outside the data range: an L{norm} perturbation must be "
                          f"in (0, {limit:.4g}] for inputs spanning {domain.span:.4g} per "
                          "feature (image ε is in pixel units of [0, 1]; tabular ε in training "
                          "standard deviations)")
    return Threat(float(eps), norm, domain)


# --- shared torch pieces (also used by autoattack and adversarial training) -----------------


def per_sample_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "inf" else flat.norm(dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, threat: Threat, lower: torch.Tensor,
            upper: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Project onto the ε-ball around ``x`` (mutable features only), then into the box."""
    delta = (x_adv - x) * mask
    if threat.norm == "inf":
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        norms = per_sample_norm(delta, "2").clamp_min(1e-12)
        delta = delta * (threat.eps / norms).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
    return torch.max(torch.min(x + delta, upper), lower)


def random_start(x: torch.Tensor, threat: Threat, mask: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """A uniform point of the L∞ ball, or a uniform direction at a uniform L2 radius."""
    if threat.norm == "inf":
        return (torch.rand(x.shape, generator=generator) * 2 - 1) * threat.eps * mask
    shape = (-1, *[1] * (x.dim() - 1))
    noise = torch.randn(x.shape, generator=generator) * mask
    radius = torch.rand(len(x), generator=generator) * threat.eps
    return noise / per_sample_norm(noise, "2").clamp_min(1e-12).view(shape) * radius.view(shape)


def steepest_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm ascent direction: sign for L∞, normalised gradient for L2."""
    if norm == "inf":
        return grad.sign()
    return grad / per_sample_norm(grad, "2").clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-sample loss, d loss / d x, logits); ``loss`` is "ce" or "dlr"."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        losses = (nn.functional.cross_entropy(logits, y, reduction="none") if loss == "ce"
                  else dlr_loss(logits, y))
        grad, = torch.autograd.grad(losses.sum(), x)
    return losses.detach(), grad, logits.detach()


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's difference-of-logits-ratio loss (scale-invariant; needs ≥ 3 classes)."""
    ordered, _ = logits.sort(dim=1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    is_top = ordered[:, -1] == true
    other = torch.where(is_top, ordered[:, -2], ordered[:, -1])
    return -(true - other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def pgd_tensor(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, *,
               steps: int, step_size: float, random_init: bool,
               generator: torch.Generator) -> torch.Tensor:
    """One PGD run on a batch (tensors in, tensors out); the model is not changed."""
    lower, upper, mask = threat.tensors(x.device)
    x_adv = x.clone()
    if random_init:
        x_adv = project(x + random_start(x, threat, mask, generator).to(x.device), x, threat,
                        lower, upper, mask)
    for _ in range(steps):
        _, grad, _ = input_gradient(model, x_adv, y)
        x_adv = project(x_adv + step_size * steepest_step(grad * mask, threat.norm), x, threat,
                        lower, upper, mask)
    return x_adv.detach()


# --- white-box attacks ----------------------------------------------------------------------


def pgd(model: nn.Module, X: np.ndarray, y: np.ndarray, threat: Threat, *, steps: int = 40,
        step_size: float | None = None, restarts: int = 1, random_init: bool = True,
        batch_size: int = 512, seed: int = 0) -> np.ndarray:
    """Madry et al.'s PGD: ``steps`` projected steepest-ascent steps on cross-entropy.

    ``step_size`` defaults to 2.5·ε/steps. With several ``restarts`` a point keeps the first
    restart that fools the model (the last one otherwise), as ART does; a restart attacks only
    the points still standing (as AutoAttack does), so restarts cost little on a weak model.
    """
    if steps < 1 or restarts < 1:
        raise ConfigError(f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}")
    step = step_size if step_size is not None else 2.5 * threat.eps / steps
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    out = np.empty_like(X)
    for start in range(0, len(X), batch_size):
        x = torch.from_numpy(X[start:start + batch_size])
        target = torch.from_numpy(y[start:start + batch_size])
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool)
        for _ in range(restarts):
            standing = (~fooled).nonzero().flatten()
            if not len(standing):
                break
            x_adv = pgd_tensor(model, x[standing], target[standing], threat, steps=steps,
                               step_size=step, random_init=random_init, generator=generator)
            with torch.no_grad():
                fooled[standing] = model(x_adv).argmax(1) != target[standing]
            best[standing] = x_adv
        out[start:start + len(x)] = best.numpy()
    return out


def fgsm(model: nn.Module, X: np.ndarray, y: np.ndarray, threat: Threat, **_: object) -> np.ndarray:
    """Goodfellow et al.'s fast gradient (sign) method: one step of size ε from the clean input."""
    return pgd(model, X, y, threat, steps=1, step_size=threat.eps, random_init=False)


def _project_numpy(X_adv: np.ndarray, X: np.ndarray, domain: InputDomain) -> np.ndarray:
    """Keep only the changes to mutable features, inside the box (no ε bound)."""
    return np.clip(X + (X_adv - X) * domain.mask, domain.lower, domain.upper).astype(np.float32)


def carlini_wagner(model: nn.Module, X: np.ndarray, y: np.ndarray, data: DataBundle,
                   domain: InputDomain, *, max_iter: int = 10, binary_search_steps: int = 5,
                   batch_size: int = 128) -> np.ndarray:
    """ART's Carlini–Wagner L2 (minimal perturbation, unbounded ε)."""
    from art.attacks.evasion import CarliniL2Method

    attack = CarliniL2Method(art_classifier(model, data, domain=domain), max_iter=max_iter,
                             binary_search_steps=binary_search_steps, batch_size=batch_size,
                             verbose=False)
    return _project_numpy(attack.generate(X, y=y), X, domain)


def deepfool(model: nn.Module, X: np.ndarray, y: np.ndarray, data: DataBundle,
             domain: InputDomain, *, max_iter: int = 50, batch_size: int = 128) -> np.ndarray:
    """ART's DeepFool (minimal L2 perturbation by linearising the decision boundary)."""
    from art.attacks.evasion import DeepFool

    attack = DeepFool(art_classifier(model, data, domain=domain), max_iter=max_iter,
                      batch_size=batch_size, verbose=False)
    return _project_numpy(attack.generate(X), X, domain)


# --- black-box attacks ----------------------------------------------------------------------


def square(model: nn.Module, X: np.ndarray, y: np.ndarray, data: DataBundle, threat: Threat, *,
           queries: int = 1000, restarts: int = 1, batch_size: int = 256,
           seed: int = 0) -> np.ndarray:
    """ART's Square attack (score-based, ``queries`` iterations per restart); images only."""
    from art.attacks.evasion import SquareAttack

    if data.modality != "image":
        raise TrustlabError("the Square attack is defined on images (ART's SquareAttack needs "
                            "N×C×H×W inputs); use hopskipjump for tabular models")
    np.random.seed(seed)  # ART's Square draws from numpy's global generator
    attack = SquareAttack(art_classifier(model, data, domain=threat.domain),
                          norm=np.inf if threat.norm == "inf" else 2, eps=threat.eps,
                          max_iter=queries, nb_restarts=restarts, batch_size=batch_size,
                          verbose=False)
    return attack.generate(X, y=y)


class AsFloat32(nn.Module):
    """Casts inputs to float32 first: ART's HopSkipJump draws its random start in float64."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float())


def hopskipjump(model: nn.Module, X: np.ndarray, y: np.ndarray, data: DataBundle,
                threat: Threat, *, max_iter: int = 10, max_eval: int = 100,
                init_eval: int = 10, seed: int = 0) -> np.ndarray:
    """ART's HopSkipJump (decision-based: labels only); its minimal perturbation is kept only
    where it lies inside the ε-ball, else the clean input."""
    from art.attacks.evasion import HopSkipJump

    np.random.seed(seed)
    attack = HopSkipJump(art_classifier(AsFloat32(model), data, domain=threat.domain),
                         norm=np.inf if threat.norm == "inf" else 2, max_iter=max_iter,
                         max_eval=max_eval, init_eval=init_eval, verbose=False)
    X_adv = attack.generate(X, mask=threat.domain.mask if data.modality == "tabular" else None)
    X_adv = _project_numpy(X_adv, X, threat.domain)
    inside = per_sample_norm(torch.from_numpy(X_adv - X), threat.norm).numpy() <= threat.eps * 1.0001
    return np.where(inside.reshape(-1, *[1] * (X.ndim - 1)), X_adv, X)


# --- scoring --------------------------------------------------------------------------------


@dataclass
class AttackOutcome:
    """How an attack did: per-point robustness and perturbation size."""

    robust: np.ndarray  # bool per point: classified correctly on the adversarial input
    clean_correct: np.ndarray  # bool per point: classified correctly on the clean input
    perturbation: np.ndarray  # per-point L2 (or L∞) norm of X_adv - X
    predictions: np.ndarray

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.mean())

    @property
    def success_rate(self) -> float:
        """Fraction of correctly classified points the attack turned wrong."""
        n = int(self.clean_correct.sum())
        return float((self.clean_correct & ~self.robust).sum() / n) if n else float("nan")

    def mean_minimal_perturbation(self) -> float:
        """Mean perturbation norm over the points the attack fooled (C&W, DeepFool)."""
        fooled = self.clean_correct & ~self.robust
        return float(self.perturbation[fooled].mean()) if fooled.any() else float("nan")


def evaluate_attack(model: nn.Module, X: np.ndarray, y: np.ndarray, X_adv: np.ndarray, *,
                    norm: str = "2", clean_predictions: np.ndarray | None = None) -> AttackOutcome:
    """Score adversarial inputs: a point is robust if correct both clean and attacked."""
    if X_adv.shape != X.shape:
        raise TrustlabError(f"attack returned shape {X_adv.shape} for inputs of shape {X.shape}")
    clean = clean_predictions if clean_predictions is not None else predict(model, X).argmax(1)
    adv = predict(model, X_adv.astype(np.float32)).argmax(1)
    clean_correct = clean == y
    size = per_sample_norm(torch.from_numpy(X_adv - X), norm).numpy()
    return AttackOutcome(robust=clean_correct & (adv == y), clean_correct=clean_correct,
                         perturbation=size, predictions=adv)
