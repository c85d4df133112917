"""Membership inference, weakest to strongest. Every attack returns one score per example,
higher meaning "more likely a training member"; ``trustlab.privacy.audit.mia_metrics`` grades it.

- ``loss_scores`` / ``confidence_scores`` / ``reconstruction_scores``: global thresholds
  (Yeom et al. 2018); the autoencoder's version uses its reconstruction error.
- ``art_blackbox_scores``: ART's learned black-box attack, cross-fitted so every example is
  scored by an attack model that never saw it.
- ``shadow_attack_scores``: Shokri et al. (2017): an attack classifier learns in/out from shadow
  models' outputs on rows whose membership it knows.
- ``lira_scores``: LiRA (Carlini et al. 2022), online and offline, per-example Gaussian fits of
  the logit-scaled confidence of reference models trained with / without the example, with
  variances shrunk towards those of examples of similar difficulty.
- ``rmia_scores``: RMIA (Zarifzadeh et al. 2024): the likelihood ratio of x against population
  points z, each normalised by the reference models' average.

Reference models come from :mod:`trustlab.attacks.reference_models`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import nn

from trustlab.errors import ConfigError, DataError

EPS = 1e-30


def check_disjoint(member_rows: np.ndarray, nonmember_rows: np.ndarray) -> None:
    """Members and non-members must be different examples (by source row id)."""
    overlap = np.intersect1d(np.asarray(member_rows), np.asarray(nonmember_rows))
    if overlap.size:
        raise DataError(f"{overlap.size} example(s) are both members and non-members (source "
                        f"rows {overlap[:5].tolist()}…): membership inference needs disjoint "
                        "sets; pass the training split as members and a held-out split as "
                        "non-members")


def check_logits(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Class scores ``(n, classes)`` with one label per row, else a clear error."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ConfigError(f"membership attacks on a classifier need class scores of shape "
                          f"(n, classes >= 2); the model returned shape {logits.shape}, so it "
                          "has no class probabilities (for an autoencoder use "
                          "reconstruction_scores)")
    if len(logits) != len(y):
        raise DataError(f"{len(logits)} model outputs for {len(y)} labels")
    if y.min() < 0 or y.max() >= logits.shape[1]:
        raise DataError(f"labels must lie in [0, {logits.shape[1]}), got [{y.min()}, {y.max()}]")
    return logits.astype(np.float64)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.asarray(logits, dtype=np.float64)).log_softmax(-1).numpy()


def true_class_log_prob(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y | x) for logits of shape (..., n, classes) and labels (n,)."""
    logp = _log_softmax(logits)
    return np.take_along_axis(logp, np.broadcast_to(y[:, None], logp.shape[:-1] + (1,)),
                              axis=-1)[..., 0]


def logit_confidence(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's statistic φ = log(p_y / (1 − p_y)), computed stably as z_y − logsumexp(z_{≠y})."""
    logits = np.asarray(logits, dtype=np.float64)
    label = np.broadcast_to(y[:, None], logits.shape[:-1] + (1,))
    correct = np.take_along_axis(logits, label, axis=-1)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, label, -np.inf, axis=-1)
    return correct - torch.from_numpy(others).logsumexp(-1).numpy()


def loss_scores(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Yeom et al.: minus the cross-entropy loss (members have low loss)."""
    return true_class_log_prob(check_logits(logits, y), y)


def confidence_scores(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The largest class probability (label-free confidence threshold)."""
    return np.exp(_log_softmax(check_logits(logits, y)).max(axis=1))


def reconstruction_scores(reconstructions: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Minus the per-row reconstruction error of an autoencoder (members reconstruct better)."""
    return -reconstruction_statistic(reconstructions, X, log=False)


def reconstruction_statistic(reconstructions: np.ndarray, X: np.ndarray,
                             log: bool = True) -> np.ndarray:
    """Per-row MSE over the last axis (``-log MSE`` with ``log``, LiRA's autoencoder statistic)."""
    mse = ((np.asarray(reconstructions, np.float64) - X.reshape(X.shape[0], -1)) ** 2).mean(-1)
    return -np.log(mse + 1e-12) if log else mse


# --- reference-model attacks ------------------------------------------------------------------


VARIANCES = ("shrunk", "fixed", "per_example")


def lira_scores(target: np.ndarray, reference: np.ndarray, in_mask: np.ndarray | None = None, *,
                online: bool = True, variance: str = "shrunk") -> np.ndarray:
    """LiRA: log-likelihood ratio of the target's statistic under per-example Gaussians.

    ``target`` (n,) is φ of the attacked model, ``reference`` (M, n) φ of M reference models and
    ``in_mask`` (M, n) whether each reference trained on each example. Online compares the
    IN and OUT Gaussians; offline (``online=False``, or no IN models) uses the one-sided OUT
    test. Each Gaussian has its example's own mean; its variance is (``variance``):

    - ``"per_example"``: the example's own sample variance (needs many reference models);
    - ``"fixed"``: one variance pooled over all examples (Carlini et al.'s choice for few models);
    - ``"shrunk"`` (default): the example's variance shrunk towards the variance pooled over the
      examples of similar mean (:func:`shrunk_variance`). An overfit model's φ spreads far more
      on easy examples than on hard ones, which one pooled variance misses.
    """
    if variance not in VARIANCES:
        raise ConfigError(f"variance must be one of {VARIANCES}, got {variance!r}")
    reference = np.asarray(reference, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if reference.ndim != 2 or reference.shape[1] != len(target):
        raise DataError(f"reference statistics must have shape (models, {len(target)}), got "
                        f"{reference.shape}")
    in_mask = (np.zeros(reference.shape, bool) if in_mask is None
               else np.asarray(in_mask, bool))
    out_mask = ~in_mask
    if online and (in_mask.sum(0) == 0).any():
        raise DataError("online LiRA needs at least one IN reference model per example: use "
                        "more reference models or online=False")
    if (out_mask.sum(0) == 0).any():
        raise DataError("LiRA needs at least one OUT reference model per example: use more "
                        "reference models")
    mu_out, var_out = _masked_moments(reference, out_mask, variance)
    if not online:
        return stats.norm.logcdf(target, mu_out, np.sqrt(var_out))
    mu_in, var_in = _masked_moments(reference, in_mask, variance)
    return (stats.norm.logpdf(target, mu_in, np.sqrt(var_in))
            - stats.norm.logpdf(target, mu_out, np.sqrt(var_out)))


def _masked_moments(values: np.ndarray, mask: np.ndarray,
                    variance: str) -> tuple[np.ndarray, np.ndarray]:
    count = mask.sum(0)
    mean = np.where(mask, values, 0).sum(0) / np.maximum(count, 1)
    squares = np.where(mask, (values - mean) ** 2, 0).sum(0)
    dof = np.maximum(count - 1, 0)
    if variance == "fixed" or (variance == "per_example" and (dof == 0).any()):
        var = np.full(values.shape[1], squares.sum() / max(int(dof.sum()), 1))
    elif variance == "per_example":
        var = squares / dof
    else:
        var = shrunk_variance(squares, dof, values.mean(0))
    return mean, np.maximum(var, 1e-6)


def shrunk_variance(squares: np.ndarray, dof: np.ndarray, location: np.ndarray, *,
                    bins: int = 10, prior_weight: float = 10.0) -> np.ndarray:
    """Per-example variances, empirical-Bayes style: ``squares`` (sums of squared deviations,
    ``dof`` degrees of freedom each) shrunk towards the variance pooled over the examples in the
    same ``location`` decile (``bins`` quantile bins), weighted as ``prior_weight``
    pseudo-observations: ``(squares + k·pooled) / (dof + k)``."""
    edges = np.quantile(location, np.linspace(0, 1, bins + 1)[1:-1])
    bin_of = np.searchsorted(edges, location)
    pooled = (np.bincount(bin_of, squares, bins)
              / np.maximum(np.bincount(bin_of, dof, bins), 1))[bin_of]
    return (squares + prior_weight * pooled) / (dof + prior_weight)


def rmia_scores(target: np.ndarray, reference: np.ndarray, in_mask: np.ndarray | None,
                population_target: np.ndarray, population_reference: np.ndarray, *,
                gamma: float = 1.0, offline_a: float = 0.3) -> np.ndarray:
    """RMIA: for each x, the fraction of population points z with
    ``(p(x|θ)/p(x)) / (p(z|θ)/p(z)) > γ``.

    ``target`` (n,) and ``reference`` (M, n) are p(y|x) of the attacked and reference models;
    ``population_*`` the same for the z points (which no reference model trained on is fine).
    With ``in_mask`` (online) p(x) averages all reference models; without it (offline) p(x) is
    ``((1+a)·mean_OUT + (1−a)) / 2`` as in the paper's offline approximation.
    """
    target, reference = np.asarray(target, np.float64), np.asarray(reference, np.float64)
    if reference.shape[1] != len(target) or population_reference.shape[1] != len(
            population_target):
        raise DataError("RMIA: reference probabilities must be (models, examples) for both the "
                        "examples and the population points")
    if in_mask is None:
        prior_x = ((1 + offline_a) * reference.mean(0) + (1 - offline_a)) / 2
        prior_z = ((1 + offline_a) * population_reference.mean(0) + (1 - offline_a)) / 2
    else:
        prior_x, prior_z = reference.mean(0), population_reference.mean(0)
    ratio_x = target / np.maximum(prior_x, EPS)
    ratio_z = np.sort(population_target / np.maximum(prior_z, EPS))
    # fraction of z with ratio_x / ratio_z > γ, i.e. ratio_z < ratio_x / γ; ties (x beating every
    # z) are broken by ratio_x itself, the limit of an ever larger population
    fraction = np.searchsorted(ratio_z, ratio_x / gamma, side="left") / len(ratio_z)
    return fraction + 1e-6 * (np.arctan(np.log(np.maximum(ratio_x, EPS))) / np.pi + 0.5)


def reference_attack_scores(target_logits: np.ndarray, reference_logits: np.ndarray,
                            in_mask: np.ndarray, y: np.ndarray,
                            population_target_logits: np.ndarray | None = None,
                            population_reference_logits: np.ndarray | None = None,
                            population_y: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """LiRA (online and offline, fixed variance) and RMIA scores of a classifier's examples,
    from the target's logits ``(n, classes)`` and the reference models' ``(M, n, classes)``.
    RMIA is added when population points ``z`` (logits of both and their labels) are given."""
    target_logits = check_logits(target_logits, y)
    phi_target = logit_confidence(target_logits, y)
    phi_reference = logit_confidence(reference_logits, y)
    scores = {"lira": lira_scores(phi_target, phi_reference, in_mask, online=True),
              "lira_offline": lira_scores(phi_target, phi_reference, in_mask, online=False)}
    if population_target_logits is not None:
        scores["rmia"] = rmia_scores(
            np.exp(true_class_log_prob(target_logits, y)),
            np.exp(true_class_log_prob(reference_logits, y)), in_mask,
            np.exp(true_class_log_prob(population_target_logits, population_y)),
            np.exp(true_class_log_prob(population_reference_logits, population_y)))
    return scores


def attack_features(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """What a learned attack sees of one query: sorted probabilities, true-class log-probability,
    logit-scaled confidence and the one-hot label."""
    logits = check_logits(logits, y)
    probs = np.exp(_log_softmax(logits))
    return np.column_stack([-np.sort(-probs, axis=1), true_class_log_prob(logits, y),
                            logit_confidence(logits, y), np.eye(logits.shape[1])[y]])


def shadow_attack_scores(shadow_logits: np.ndarray, shadow_masks: np.ndarray,
                         population_y: np.ndarray, target_logits: np.ndarray,
                         y: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Shokri et al.: train a classifier on shadow models' outputs (``(M, N, classes)`` on the
    population, ``shadow_masks`` (M, N) in/out) and apply it to the target's outputs."""
    from sklearn.ensemble import RandomForestClassifier

    shadow_logits = np.asarray(shadow_logits)
    if shadow_logits.shape[:2] != shadow_masks.shape:
        raise DataError(f"shadow outputs {shadow_logits.shape[:2]} and masks "
                        f"{shadow_masks.shape} disagree")
    features = np.concatenate([attack_features(s, population_y) for s in shadow_logits])
    attack = RandomForestClassifier(n_estimators=100, min_samples_leaf=20, random_state=seed)
    attack.fit(features, np.asarray(shadow_masks, bool).ravel())
    return attack.predict_proba(attack_features(target_logits, y))[:, 1]


# --- ART's learned black-box attack -----------------------------------------------------------


def art_classifier(model: nn.Module, input_shape: tuple[int, ...], n_classes: int,
                   clip_values: tuple[float, float] | None = None):
    """Wrap a (detached, eval-mode) classifier as an ART ``PyTorchClassifier``."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=input_shape,
                             nb_classes=n_classes, clip_values=clip_values,
                             device_type="cpu")


def art_blackbox_scores(classifier, X: np.ndarray, y: np.ndarray, is_member: np.ndarray, *,
                        logits: np.ndarray | None = None, attack_model_type: str = "rf",
                        seed: int = 0) -> np.ndarray:
    """ART's ``MembershipInferenceBlackBox``, two-fold cross-fitted: the attack model fitted on
    one half of the members and non-members scores the other half, and vice versa.

    ``classifier`` is an ART classifier (:func:`art_classifier`); ``logits`` (optional) are its
    precomputed outputs on ``X``, passed to ART as ``pred`` to save a forward pass.
    """
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

    is_member = np.asarray(is_member, bool)
    probs = (np.exp(_log_softmax(logits)) if logits is not None
             else classifier.predict(X)).astype(np.float32)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=int)
    for label in (True, False):
        rows = np.flatnonzero(is_member == label)
        fold[rng.permutation(rows)[: len(rows) // 2]] = 1
    scores = np.zeros(len(y))
    for held in (0, 1):
        fit, score = fold != held, fold == held
        members, nonmembers = fit & is_member, fit & ~is_member
        np.random.seed(seed + held)  # ART's random forest draws from the global generator
        attack = MembershipInferenceBlackBox(classifier, input_type="prediction",
                                             attack_model_type=attack_model_type)
        attack.fit(X[members], y[members], X[nonmembers], y[nonmembers],
                   pred=probs[members], test_pred=probs[nonmembers])
        scores[score] = attack.infer(X[score], y[score], pred=probs[score],
                                     probabilities=True).reshape(len(y[score]), -1)[:, -1]
    return scores
