"""TCAV with data-built concepts and its significance test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustlab.errors import ConfigError
from trustlab.explain.tcav import data_concepts, default_layer, random_sets, tcav_scores


def test_tcav_on_digits(digits_cnn):
    model = digits_cnn.clean_model()
    concepts = data_concepts(digits_cnn.data, size=32)
    assert set(concepts) == {"thick_strokes", "top_half"}
    assert np.all(concepts["top_half"][:, :, 4:] == 0)
    split = digits_cnn.split("test")
    inputs = torch.from_numpy(split.X[split.y == 3][:30])
    scores = tcav_scores(model, inputs, 3, concepts, random_sets(digits_cnn.data, 4, size=32))
    for score in scores:
        assert score.layer == default_layer(model) == "features.6"
        assert 0 <= score.p_value <= 1 and len(score.scores) == len(score.null_scores) == 3
        assert np.all((score.scores >= 0) & (score.scores <= 1))


def test_tabular_concepts_are_group_memberships(adult_mlp):
    concepts = data_concepts(adult_mlp.data, size=64)
    assert {"sex=Female", "sex=Male", "race=White"} <= set(concepts)
    members = adult_mlp.split("train")
    female_rows = members.X[members.sensitive["sex"].to_numpy() == "Female"]
    assert {tuple(r) for r in concepts["sex=Female"]} <= {tuple(r) for r in female_rows}


def test_tcav_errors(small_model, digits_cnn):
    model, inputs = small_model("lstm")
    with pytest.raises(ConfigError, match="no default TCAV layer"):
        default_layer(model)
    with pytest.raises(ConfigError, match="at least 3 random sets"):
        tcav_scores(digits_cnn.clean_model(), inputs, 0, {}, random_sets(digits_cnn.data, 2))
