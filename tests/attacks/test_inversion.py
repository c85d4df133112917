"""Model inversion on the digits CNN, graded by a classifier trained independently (test split)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from trustlab.attacks.inversion import (image_grid, inversion_quality, miface,
                                        regularised_inversion, total_variation)
from trustlab.attacks.membership import art_classifier


@pytest.fixture(scope="module")
def graders(digits_cnn):
    test, train = digits_cnn.split("test"), digits_cnn.split("train")
    evaluator = LogisticRegression(max_iter=2000).fit(test.X.reshape(len(test), -1), test.y)
    means = np.stack([train.X[train.y == k].mean(0) for k in range(10)])
    return evaluator, means


def test_total_variation_of_flat_image_is_zero() -> None:
    import torch

    assert float(total_variation(torch.full((1, 1, 8, 8), 0.3))) == 0.0
    assert float(total_variation(torch.eye(8)[None, None])) > 0


def test_regularised_inversion_is_recognised_well_above_chance(digits_cnn, graders,
                                                               tmp_path) -> None:
    evaluator, means = graders
    images = regularised_inversion(digits_cnn.clean_model(), 10, (1, 8, 8), steps=150)
    quality = inversion_quality(evaluator.predict, images, means)
    noise = np.random.default_rng(0).random((10, 1, 8, 8))
    assert quality.eval_accuracy >= 0.3  # chance is 0.1
    assert quality.eval_accuracy > inversion_quality(evaluator.predict, noise, means).eval_accuracy
    image_grid({"means": means, "inverted": images}, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.slow
def test_art_miface_is_recognised_above_chance(digits_cnn, graders) -> None:
    evaluator, means = graders
    classifier = art_classifier(digits_cnn.clean_model(), (1, 8, 8), 10, (0.0, 1.0))
    images = miface(classifier, 10, (1, 8, 8), max_iter=300)
    assert inversion_quality(evaluator.predict, images, means).eval_accuracy > 0.3
