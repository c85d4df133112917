"""run_spec in process: caching and resume, determinism, baselines, errors, user models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from trustlab.audit.pipeline import build_subject, run_spec, subject_hash
from trustlab.audit.spec import parse_spec
from trustlab.audit.store import ReportStore
from trustlab.errors import CheckpointError


def make_spec(checkpoint, auditors: str, policy: str = "[]", extra: str = ""):
    return parse_spec(f"subject:\n  checkpoint: {checkpoint}\nplugins: [fake_auditors]\n"
                      f"auditors:\n{auditors}\npolicy: {policy}\n{extra}")


def values(report) -> dict:
    return {k: (m.value, m.ci_low, m.ci_high) for k, m in report.metrics().items()}


def test_finished_auditors_are_reused_and_artifacts_land_in_every_run(
        tmp_path, fake_auditors, german_checkpoint):
    log = tmp_path / "log"
    spec = make_spec(german_checkpoint, f"  performance: {{}}\n  fake_seeded: {{}}\n"
                                        f"  fake_counter: {{log: {log}}}")
    store = ReportStore(tmp_path / "store")
    first = run_spec(spec, store, show_progress=False)
    second = run_spec(spec, store, show_progress=False)
    assert log.read_text() == "ran\n"
    assert first.cached == [] and sorted(second.cached) == ["fake_counter", "fake_seeded",
                                                            "performance"]
    assert values(first.report) == values(second.report)
    for gate in (first, second):
        assert (store.run_dir(gate.report.run_id) / "fake_seeded" / "draws.json").is_file()
    assert {r["run_id"] for r in store.list_runs()} == {first.report.run_id,
                                                        second.report.run_id}
    changed = make_spec(german_checkpoint, f"  fake_counter: {{log: {log}}}", extra="seed: 1")
    run_spec(changed, store, show_progress=False)
    assert log.read_text() == "ran\nran\n"  # another seed is another cache key


def test_an_interrupted_run_stores_nothing_and_the_rerun_resumes(tmp_path, fake_auditors,
                                                                  german_checkpoint):
    log, block = tmp_path / "log", tmp_path / "block"
    block.touch()
    spec = make_spec(german_checkpoint, f"  fake_counter: {{log: {log}}}\n"
                                        f"  fake_interrupted: {{block: {block}}}")
    store = ReportStore(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        run_spec(spec, store, show_progress=False)
    assert store.list_runs() == [] and not list(store.runs_dir.glob("*/report.json"))
    block.unlink()
    gate = run_spec(spec, store, show_progress=False)
    assert gate.cached == ["fake_counter"] and log.read_text() == "ran\n"
    assert gate.report.metrics()["fake_interrupted.value"].value == 3.0
    assert [r["run_id"] for r in store.list_runs()] == [gate.report.run_id]


def test_same_spec_and_seed_give_the_same_metrics(tmp_path, fake_auditors,
                                                  german_checkpoint):
    spec = make_spec(german_checkpoint, "  performance: {}\n  fake_seeded: {}", extra="seed: 7")
    one = run_spec(spec, ReportStore(tmp_path / "a"), show_progress=False)
    two = run_spec(spec, ReportStore(tmp_path / "b"), show_progress=False)
    assert one.cached == two.cached == []
    assert values(one.report) == values(two.report)
    other = run_spec(make_spec(german_checkpoint, "  fake_seeded: {}", extra="seed: 8"),
                     ReportStore(tmp_path / "c"), show_progress=False)
    assert other.report.metrics()["fake_seeded.score"].value != \
        one.report.metrics()["fake_seeded.score"].value


@pytest.mark.parametrize("mode, code", [("error", 2), ("fail", 1), ("ignore", 0)])
def test_an_errored_auditor_sets_the_exit_code_and_is_not_cached(
        tmp_path, fake_auditors, german_checkpoint, mode, code):
    spec = make_spec(german_checkpoint, "  fake_seeded: {}\n  fake_broken: {}",
                     policy="[fake_seeded.score < 1]", extra=f"on_auditor_error: {mode}")
    store = ReportStore(tmp_path / "store")
    gate = run_spec(spec, store, show_progress=False)
    assert gate.exit_code == code
    broken = gate.report.result("fake_broken")
    assert broken.status == "errored" and "boom" in broken.error
    assert run_spec(spec, store, show_progress=False).cached == ["fake_seeded"]
    assert not list((store.root / "cache").glob(".staging-*"))


def test_baseline_rules_gate_regressions(tmp_path, german_checkpoint):
    store = ReportStore(tmp_path / "store")
    rules = "[performance.test_accuracy >= baseline - 0.001, performance.test_accuracy > baseline]"
    spec = parse_spec(f"subject: {{checkpoint: {german_checkpoint}}}\n"
                      f"auditors: {{performance: {{}}}}\npolicy: {rules}\n")
    first = run_spec(spec, store, show_progress=False)
    assert [r.status for r in first.rules] == ["skipped", "skipped"] and first.exit_code == 0
    second = run_spec(spec, store, baseline=first.report.run_id, show_progress=False)
    assert [r.status for r in second.rules] == ["passed", "failed"] and second.exit_code == 1
    assert second.report.provenance["baseline"] == first.report.run_id


USER_MODULE = '''
import torch
from trustlab.train.data import load_dataset

def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear({n}, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

def load():
    return load_dataset("german", seed=0)
'''


def test_user_model_factory_weights_and_data_loader(tmp_path, monkeypatch):
    from trustlab.train.data import load_dataset

    data = load_dataset("german", seed=0)
    (tmp_path / "user_model_h8.py").write_text(USER_MODULE.format(n=data.input_shape[0]))
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_model_h8

    model = user_model_h8.make_model()
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([0.0, 5.0]))  # predicts class 1 everywhere
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    spec = parse_spec("subject:\n  model: user_model_h8:make_model\n  weights: "
                      "weights.safetensors\n  data: user_model_h8:load\n  name: mine\n"
                      "auditors: {performance: {}}\n", source=tmp_path / "spec.yaml")
    gate = run_spec(spec, ReportStore(tmp_path / "store"), show_progress=False)
    test = data.splits["test"]
    logits = model(torch.from_numpy(test.X)).detach().numpy()
    expected = float(np.mean(logits.argmax(axis=1) == test.y))
    assert gate.report.metrics()["performance.test_accuracy"].value == pytest.approx(expected)
    assert gate.report.subject["name"] == "mine"
    (tmp_path / "weights.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        build_subject(spec)


def test_subject_hash_changes_with_the_weights(german_checkpoint):
    spec = parse_spec(f"subject: {{checkpoint: {german_checkpoint}}}\n")
    subject = build_subject(spec)
    before = subject_hash(subject)
    assert subject_hash(build_subject(spec)) == before
    with torch.no_grad():
        next(subject.model.parameters()).add_(1e-3)
    assert subject_hash(subject) != before


@pytest.mark.slow
def test_ray_backend_gives_the_local_metrics(tmp_path, fake_auditors, german_checkpoint,
                                             monkeypatch):
    ray = pytest.importorskip("ray")
    # the Ray workers import the fake auditors plugin from here
    monkeypatch.setenv("PYTHONPATH", str(Path(fake_auditors.__file__).parent))
    spec = make_spec(german_checkpoint, "  performance: {}\n  fake_seeded: {}", extra="seed: 5")
    local = run_spec(spec, ReportStore(tmp_path / "local"), show_progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_spec(spec, ReportStore(tmp_path / "ray"), backend="ray",
                          show_progress=False)
    finally:
        ray.shutdown()
    assert remote.report.provenance["backend"] == "ray" and remote.cached == []
    assert values(remote.report) == values(local.report)
    artifact = ReportStore(tmp_path / "ray").run_dir(remote.report.run_id) / "fake_seeded"
    assert (artifact / "draws.json").is_file()


def test_assert_policy_runs_a_spec_file(tmp_path, german_checkpoint):
    from trustlab.testing import assert_policy

    spec = tmp_path / "audit.yaml"
    spec.write_text(f"subject: {{checkpoint: {german_checkpoint}}}\n"
                    "auditors: {performance: {}}\npolicy: [performance.test_accuracy >= 0.5]\n")
    results = assert_policy(spec, ["performance.test_accuracy <= 1"], store=tmp_path / "store")
    assert [r.status for r in results] == ["passed", "passed"]
    with pytest.raises(AssertionError, match="performance.test_accuracy >= 0.999"):
        assert_policy(spec, ["performance.test_accuracy >= 0.999"], store=tmp_path / "store")
