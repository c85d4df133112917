"""Spec validation: good specs load; bad ones name file, line, field and what is allowed."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from trustlab.audit.spec import load_spec, parse_spec, yaml_line
from trustlab.errors import ConfigError

GOOD = """\
name: ci
seed: 3
tier: full
subject:
  checkpoint: models/adult-mlp
auditors:
  performance: {}
policy:
  - performance.test_accuracy >= 0.8
  - rule: upper(performance.generalization_gap) <= baseline + 0.02
    name: no regression
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_spec(textwrap.dedent(text), source="spec.yaml")
    return str(caught.value)


def test_good_spec_loads_and_resolves_paths(tmp_path):
    path = tmp_path / "ci" / "audit.yaml"
    path.parent.mkdir()
    path.write_text(GOOD)
    spec = load_spec(path)
    assert (spec.seed, spec.tier, spec.name) == (3, "full", "ci")
    assert spec.resolve(spec.subject.checkpoint) == tmp_path / "ci" / "models" / "adult-mlp"
    assert spec.auditor_params() == {"performance": {}}
    rules = spec.rules()
    assert [r.name for r in rules] == ["", "no regression"]
    assert rules[1].metrics() == ["performance.generalization_gap"]


@pytest.mark.parametrize("mutation, where, says", [
    (("performance: {}", "performnce: {}"), "spec.yaml:7: auditors.performnce",
     "unknown auditor 'performnce'; available: "),
    (("- performance.test_accuracy >= 0.8", "- accuracy >= 0.8"), "spec.yaml:9: policy[0].rule",
     "'accuracy' is not a metric name"),
    (("- performance.test_accuracy >= 0.8", "- fairness.sex.eod <= 0.1"),
     "spec.yaml:9: policy[0].rule", "belongs to auditor 'fairness', which this spec does not run"),
    (("seed: 3", "seed: three"), "spec.yaml:2: seed", "valid integer"),
    (("tier: full", "tier: nightly"), "spec.yaml:3: tier", "'smoke' or 'full'"),
    (("name: ci", "nmae: ci"), "spec.yaml:1: nmae", "unknown field; allowed here: version, name"),
    (("  checkpoint: models/adult-mlp", "  checkpoint: m\n  model: a.b:c"), "spec.yaml:4: subject",
     "give either checkpoint, or model + weights + data"),
    (("  checkpoint: models/adult-mlp", "  chekpoint: m"), "spec.yaml:5: subject.chekpoint",
     "allowed here: name, checkpoint, model"),
    (("_gap) <= baseline", "_gap) baseline"), "spec.yaml:10: policy[1].rule",
     "expected a comparison"),
])
def test_malformed_spec_names_line_field_and_allowed_values(mutation, where, says):
    old, new = mutation
    assert old in GOOD
    message = error_of(GOOD.replace(old, new))
    assert where in message and says in message, message


def test_yaml_syntax_error_names_the_line():
    message = error_of("subject:\n  checkpoint: [unclosed\npolicy: []\n")
    assert message.startswith("spec.yaml:") and "not valid YAML" in message


def test_user_model_references_are_checked():
    spec = GOOD.replace("  checkpoint: models/adult-mlp",
                        "  model: pkg.models:make\n  weights: m.safetensors\n  data: pkg-data")
    assert "subject.data: 'pkg-data' is not a reference" in error_of(spec)


def test_unimportable_plugin_is_a_config_error():
    assert "plugins: cannot import 'no_such_plugin_module'" in error_of(
        "plugins: [no_such_plugin_module]\n" + GOOD)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_spec(tmp_path / "nope.yaml")


def test_yaml_line_follows_keys_and_indices():
    root = yaml.compose("a:\n  b:\n    - x\n    - y: 1\n      z: 2\n")
    assert yaml_line(root, ("a",)) == 1
    assert yaml_line(root, ("a", "b", 1, "z")) == 5
    assert yaml_line(root, ("a", "b", 0)) == 3
    assert yaml_line(root, ("a", "missing")) == 1
