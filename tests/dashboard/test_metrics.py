"""The pure parts of the dashboard: metric-name parsing, table artifacts, escaping, card split."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from trustlab.dashboard import metrics as m
from trustlab.dashboard.components import escape
from trustlab.dashboard.data import split_front_matter, table_frame


def _frame(values: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([(k, v, v - 0.1, v + 0.1) for k, v in values.items()], columns=m.COLUMNS)


def test_privacy_attacks_keep_per_group_rows_apart() -> None:
    frame = _frame({"privacy.lira.auc": 0.6, "privacy.lira.tpr_at_0.01_fpr": 0.05,
                    "privacy.lira.tpr_at_1e-05_fpr": 0.001,
                    "privacy.lira.sex.Female.tpr_at_0.01_fpr": 0.07,
                    "privacy.empirical_epsilon": 1.2})
    attacks = m.privacy_attacks(frame).set_index("quantity")
    assert set(attacks["attack"]) == {"lira"}
    assert attacks.loc["AUC", "value"] == 0.6
    assert attacks.loc["TPR @ FPR=0.01", "fpr"] == 0.01
    assert attacks.loc["TPR @ FPR=1e-05", "value"] == 0.001
    groups = m.privacy_by_group(frame)
    assert groups[["attack", "feature", "group", "fpr"]].values.tolist() == \
        [["lira", "sex", "Female", "0.01"]]
    assert m.epsilons(frame)["kind"].tolist() == ["empirical ε (audit)"]


def test_parameter_curves_read_eps_and_radius_from_names() -> None:
    frame = _frame({"robustness.pgd.eps_0.03.accuracy": 0.4, "robustness.pgd.eps_0p1.accuracy":
                    0.1, "robustness.certified.radius_0.5.accuracy": 0.3,
                    "robustness.clean_accuracy": 0.9})
    curves = m.parameter_curves(frame).set_index("x")
    assert curves.loc[0.03, "curve"] == curves.loc[0.1, "curve"] == "robustness.pgd.accuracy"
    assert curves.loc[0.5, ["curve", "parameter"]].tolist() == \
        ["robustness.certified.accuracy", "radius"]
    assert len(curves) == 3  # clean accuracy has no parameter


def test_fairness_names_split_as_the_auditor_writes_them() -> None:
    frame = _frame({"fairness.sex_x_race.by_group.Female_x_White.selection_rate": 0.2,
                    "fairness.sex.by_group.Male.true_positive_rate": 0.7,
                    "fairness.sex.equalized_odds_difference": 0.12,
                    "fairness.sex.threshold_optimizer.accuracy": 0.83,
                    "fairness.sex.fair_finetune.weight_0p5.accuracy": 0.84})
    groups = m.fairness_by_group(frame)
    assert groups[["feature", "group", "metric"]].values.tolist() == [
        ["sex_x_race", "Female_x_White", "selection_rate"], ["sex", "Male", "true_positive_rate"]]
    assert m.is_intersectional("sex_x_race") and not m.is_intersectional("sex")
    assert m.fairness_disparities(frame, "sex")["name"].tolist() == \
        ["fairness.sex.equalized_odds_difference"]
    assert m.fairness_mitigation(frame)["method"].tolist() == \
        ["threshold_optimizer", "fair_finetune.weight_0p5"]


def test_compare_matches_a_naive_delta() -> None:
    a = _frame({"x.a": 1.0, "x.b": 2.0})
    b = _frame({"x.b": 2.5, "y.c": 3.0})
    table = m.compare(a, b).set_index("name")
    assert table.loc["x.b", "delta"] == pytest.approx(0.5)
    assert math.isnan(table.loc["x.a", "delta"]) and math.isnan(table.loc["y.c", "delta"])
    assert table.loc["y.c", "auditor"] == "y"


def test_table_artifacts_of_every_shape() -> None:
    rows, scalars = table_frame({"attack": "lira", "examples": [{"row": 1, "ci": [0.1, 0.2]}]})
    assert scalars == {"attack": "lira"} and rows["ci"].tolist() == ["[0.1, 0.2]"]
    rows, _ = table_frame([{"slice": "a", "size": 3}])
    assert rows.shape == (1, 2)
    assert table_frame({"members": {"rows": [1, 2]}})[0] is None


def test_escape_neutralises_markdown_and_html() -> None:
    text = escape('<img src=x> **b** [l](http://e) :red[x] $x$')
    assert re.search(r"(?<!\\)[<>*\[\]():$]", text) is None  # every special char escaped
    assert text.replace("\\", "") == '<img src=x> **b** [l](http://e) :red[x] $x$'


def test_front_matter_split() -> None:
    assert split_front_matter("---\na: 1\n---\n\n# Card\n") == ("a: 1", "# Card\n")
    assert split_front_matter("# Card\n") == ("", "# Card\n")


def test_dp_training_facts_in_order_as_text() -> None:
    table = m.dp_training_facts({"steps": 12, "epsilon": 2.5, "secure_mode": True,
                                 "accountant": "prv", "delta": None, "mechanism": "dp-sgd"})
    assert table.values.tolist() == [["ε (claimed)", "2.5"], ["steps", "12"],
                                     ["accountant", "prv"],
                                     ["secure mode (CSPRNG noise and sampling)", "yes"]]
