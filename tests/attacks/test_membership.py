"""Membership attacks against naive per-example references, batched reference models against
the one-by-one loop, and the privacy auditor end to end on the shared Adult MLP."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from trustlab.attacks.membership import (check_disjoint, check_logits, lira_scores,
                                         logit_confidence, loss_scores, rmia_scores,
                                         shrunk_variance)
from trustlab.attacks.reference_models import (RecipeSettings, batch_schedule, half_masks,
                                               train_reference_models)
from trustlab.audit.runner import audit
from trustlab.errors import ConfigError, DataError
from trustlab.train.zoo import InputSpec


def test_logit_confidence_is_log_odds_of_true_class() -> None:
    logits = np.random.default_rng(0).normal(size=(50, 4)) * 3
    y = np.arange(50) % 4
    p = torch.from_numpy(logits).softmax(1).numpy()[np.arange(50), y]
    assert np.allclose(logit_confidence(logits, y), np.log(p / (1 - p)))
    assert np.allclose(loss_scores(logits, y), np.log(p))


def test_lira_matches_naive_gaussian_fits() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(8, 30))
    in_mask = half_masks(8, 30, seed=2)
    target = rng.normal(size=30)
    naive = []
    for i in range(30):
        ins, outs = reference[in_mask[:, i], i], reference[~in_mask[:, i], i]
        naive.append(stats.norm.logpdf(target[i], ins.mean(), ins.std(ddof=1))
                     - stats.norm.logpdf(target[i], outs.mean(), outs.std(ddof=1)))
    got = lira_scores(target, reference, in_mask, variance="per_example")
    assert np.allclose(got, naive)


def test_lira_beats_global_threshold_when_difficulty_varies() -> None:
    """Examples differ in how easy they are; LiRA calibrates per example, a threshold cannot."""
    rng = np.random.default_rng(2)
    n, models = 4000, 16
    difficulty = rng.normal(0, 3, n)
    is_member = rng.random(n) < 0.5
    in_mask = half_masks(models, n, seed=3)
    reference = difficulty + 1.0 * in_mask + rng.normal(0, 0.5, (models, n))
    target = difficulty + 1.0 * is_member + rng.normal(0, 0.5, n)
    lira = roc_auc_score(is_member, lira_scores(target, reference, in_mask))
    threshold = roc_auc_score(is_member, target)
    assert lira > threshold + 0.2


def test_rmia_matches_naive_pairwise_count() -> None:
    rng = np.random.default_rng(4)
    target, reference = rng.random(20), rng.random((4, 20))
    z_target, z_reference = rng.random(50), rng.random((4, 50))
    got = rmia_scores(target, reference, np.ones((4, 20), bool), z_target, z_reference)
    ratio_x, ratio_z = target / reference.mean(0), z_target / z_reference.mean(0)
    naive = (ratio_x[:, None] / ratio_z[None, :] > 1).mean(1)
    assert np.allclose(got, naive, atol=1e-5)
    assert np.array_equal(np.argsort(got), np.argsort(ratio_x))


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(DataError, match="both members and non-members"):
        check_disjoint(np.array([1, 2, 3]), np.array([3, 4]))
    with pytest.raises(ConfigError, match="no class probabilities"):
        check_logits(np.zeros(10), np.zeros(10, int))
    with pytest.raises(DataError, match="at least one IN"):
        lira_scores(np.zeros(5), np.zeros((1, 5)), np.zeros((1, 5), bool))
    with pytest.raises(ConfigError, match="variance must be one of"):
        lira_scores(np.zeros(5), np.zeros((2, 5)), None, online=False, variance="pooled")


def test_half_masks_are_balanced_and_schedule_stays_inside() -> None:
    masks = half_masks(8, 101, seed=0)
    assert (masks.sum(0) == 4).all()
    schedule = batch_schedule(masks, 16, 2, seed=0)
    for m in range(8):
        assert masks[m, schedule[:, m]].all()


def test_batched_reference_models_equal_the_one_by_one_loop() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    spec = InputSpec(shape=[6], n_classes=2)
    kwargs = dict(n_models=3, config={"hidden": [16], "dropout": 0.0}, seed=5,
                  recipe=RecipeSettings(epochs=3, lr=1e-2, batch_size=32))
    batched = train_reference_models("mlp", spec, X, y, **kwargs)
    looped = train_reference_models("mlp", spec, X, y, batched=False, **kwargs)
    assert np.array_equal(batched.masks, looped.masks)
    assert np.allclose(batched.outputs(X), looped.outputs(X), atol=1e-4)
    single = batched.model(1)
    assert np.allclose(single(torch.from_numpy(X)).detach().numpy(), batched.outputs(X)[1],
                       atol=1e-5)


def test_privacy_auditor_on_adult_mlp(adult_mlp) -> None:
    report = audit(adult_mlp, auditors=["privacy"], tier="smoke", show_progress=False,
                   params={"privacy": {"samples": 300}})
    result = report.results[0]
    assert result.status == "passed", result.error
    for attack in ("loss_threshold", "confidence_threshold", "art_blackbox", "shadow", "lira",
                   "lira_offline", "rmia"):
        auc = result.metrics[f"privacy.{attack}.auc"]
        assert 0.3 < auc.value < 0.8 and auc.ci_low <= auc.value <= auc.ci_high
        assert f"privacy.{attack}.tpr_at_0.01_fpr" in result.metrics
    assert "privacy.lira.tpr_at_0.001_fpr" not in result.metrics  # 300 non-members: too few
    assert "privacy.empirical_epsilon" in result.metrics
    assert any(name.startswith("privacy.lira.sex.") for name in result.metrics)
    kinds = {a.name: a.kind for a in result.artifacts}
    assert kinds["mia_roc.json"] == "plot" and kinds["most_exposed.json"] == "table"
    assert "holdout" in result.config["nonmembers"] and "train" in result.config["members"]


def test_privacy_auditor_rejects_overlapping_splits(adult_mlp) -> None:
    data = adult_mlp.data
    splits = {**data.splits, "holdout": data.splits["train"]}
    leaky = dataclasses.replace(adult_mlp, data=dataclasses.replace(data, splits=splits))
    result = audit(leaky, auditors=["privacy"], show_progress=False).results[0]
    assert result.status == "errored" and "both members and non-members" in result.error


def test_privacy_auditor_on_autoencoder_uses_reconstruction_error(tmp_path) -> None:
    from trustlab.train.subject import Subject
    from trustlab.train.trainer import TrainSettings, train

    trained = train("autoencoder", "adult", settings=TrainSettings(epochs=2, seed=0),
                    show_progress=False)
    subject = Subject.from_trained(trained, "adult-autoencoder")
    result = audit(subject, auditors=["privacy"], show_progress=False,
                   params={"privacy": {"samples": 200}}).results[0]
    assert result.status == "passed", result.error
    assert {"privacy.reconstruction_threshold.auc", "privacy.lira.auc"} <= set(result.metrics)
    assert "privacy.art_blackbox.auc" not in result.metrics  # no class probabilities
    assert "class 0" in result.config["members"]


def test_shrunk_variance_matches_naive_binned_pooling() -> None:
    rng = np.random.default_rng(5)
    squares, dof, location = rng.random(200) * 4, rng.integers(1, 9, 200), rng.normal(size=200)
    got = shrunk_variance(squares, dof, location, bins=4, prior_weight=3.0)
    quartile = np.searchsorted(np.quantile(location, [0.25, 0.5, 0.75]), location)
    for i in range(200):
        same = quartile == quartile[i]
        pooled = squares[same].sum() / dof[same].sum()
        assert np.isclose(got[i], (squares[i] + 3.0 * pooled) / (dof[i] + 3.0))


def test_shrunk_variance_helps_when_spread_depends_on_difficulty() -> None:
    """Easy examples' statistic spreads widely, hard ones' narrowly (an overfit model's logits):
    one pooled variance misreads both; shrinking towards similar examples' variance does not."""
    rng = np.random.default_rng(6)
    n, models = 6000, 16
    location = rng.normal(0, 3, n)
    spread = np.exp(location / 2)
    is_member = rng.random(n) < 0.5
    in_mask = half_masks(models, n, seed=7)
    reference = location + spread * (in_mask + rng.normal(0, 0.7, (models, n)))
    target = location + spread * (is_member + rng.normal(0, 0.7, n))
    tpr = {}
    for variance in ("fixed", "shrunk"):
        fpr, rate, _ = roc_curve(is_member, lira_scores(target, reference, in_mask,
                                                        variance=variance))
        tpr[variance] = rate[fpr <= 0.01].max()
    assert tpr["shrunk"] > 2 * tpr["fixed"], tpr
