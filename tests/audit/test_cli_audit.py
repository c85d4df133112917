"""`trustlab audit` / `trustlab card` through the real command in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xmlschema
import yaml

from trustlab.audit.store import ReportStore
from trustlab.cli import main

HERE = Path(__file__).parent

TRUSTLAB = str(Path(sys.executable).parent / "trustlab")
SCHEMA = xmlschema.XMLSchema(str(HERE / "junit.xsd"))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
    str(HERE), os.environ.get("PYTHONPATH")]))}


def trustlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TRUSTLAB, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV)


def write_spec(folder: Path, checkpoint: Path, policy: list[str], auditors: str = "",
               name: str = "spec.yaml") -> Path:
    spec = folder / name
    rules = "".join(f"\n  - {rule}" for rule in policy)
    spec.write_text(f"seed: 0\nplugins: [fake_auditors]\nsubject:\n  checkpoint: {checkpoint}\n"
                    f"auditors:\n  performance: {{}}\n  fake_seeded: {{}}\n{auditors}"
                    f"policy:{rules or ' []'}\n")
    return spec


def junit_cases(junit: Path) -> dict:
    SCHEMA.validate(str(junit))  # raises on anything outside the common JUnit schema
    root = SCHEMA.to_dict(str(junit))
    return {case["@name"]: case for suite in root["testsuite"] for case in suite["testcase"]}


def test_pass_then_one_failing_rule(tmp_path, german_checkpoint, capsys):
    store = tmp_path / "store"
    rules = ["performance.test_accuracy >= 0.5", "upper(fake_seeded.score) <= 1"]
    spec = write_spec(tmp_path, german_checkpoint, rules)
    passed = trustlab("audit", spec, "--store", store, "--junit", tmp_path / "pass.xml",
                      "--summary", tmp_path / "pass.md", "--no-progress")
    assert passed.returncode == 0, passed.stderr[-3000:]
    run_id = passed.stdout.strip().splitlines()[-1]
    cases = junit_cases(tmp_path / "pass.xml")
    assert all("failure" not in cases[r] and "error" not in cases[r] for r in rules)
    assert "✅ passed" in (tmp_path / "pass.md").read_text()
    assert (store / "runs" / run_id / "card.md").is_file()

    failing = "lower(performance.test_accuracy) >= 0.99"
    spec = write_spec(tmp_path, german_checkpoint, [*rules, failing])
    failed = trustlab("audit", spec, "--store", store, "--junit", tmp_path / "fail.xml",
                      "--summary", tmp_path / "fail.md", "--no-progress")
    assert failed.returncode == 1, failed.stderr[-3000:]
    cases = junit_cases(tmp_path / "fail.xml")
    assert [name for name, case in cases.items() if "failure" in case] == [failing]
    failure = cases[failing]["failure"][0]
    report = ReportStore(store).load(failed.stdout.strip().splitlines()[-1])
    accuracy = report.metrics()["performance.test_accuracy"]
    assert f"measured {accuracy.ci_low:.6g}, bound 0.99" in failure["@message"]
    assert f"ci: [{accuracy.ci_low}, {accuracy.ci_high}]" in failure["$"]
    assert "❌" in (tmp_path / "fail.md").read_text()

    assert main(["card", run_id, "--store", str(store), "--format", "md"]) == 0  # in process
    front = yaml.safe_load(capsys.readouterr().out.split("---\n")[1])
    metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {k: m.value for k, m in ReportStore(store).load(run_id).metrics().items()}
    html = tmp_path / "card.html"
    assert main(["card", run_id, "--store", str(store), "--format", "html", "--out",
                 str(html)]) == 0
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert main(["card", "no-such-run", "--store", str(store)]) == 2


MALFORMED = [  # (what to break, what the message must name), each run through the real CLI
    (("fake_seeded: {}", "fake_sedeed: {}"), "auditors.fake_sedeed: unknown auditor"),
    (("performance.test_accuracy >= 0.5", "test_accuracy >= 0.5"), "policy[0].rule:"),
    (("seed: 0", "seed: [0]"), "seed: Input should be a valid integer"),
]


def test_malformed_spec_exits_2_naming_the_field(tmp_path):
    procs = []
    for index, (broken, _) in enumerate(MALFORMED):  # started together: the CLI is slow to import
        spec = write_spec(tmp_path, tmp_path / "unused", ["performance.test_accuracy >= 0.5"],
                          name=f"spec{index}.yaml")
        spec.write_text(spec.read_text().replace(*broken))
        procs.append(subprocess.Popen([TRUSTLAB, "audit", str(spec), "--store",
                                       str(tmp_path / "store")], env=ENV, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc, (_, field) in zip(procs, MALFORMED):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2 and field in stderr, stderr
        assert f"spec{procs.index(proc)}.yaml:" in stderr  # the file and line are named
    assert not list((tmp_path / "store").glob("runs/*"))


@pytest.mark.slow  # two CLI runs; test_pipeline covers the interrupt in process
def test_sigint_leaves_the_store_consistent_and_a_rerun_resumes(
        tmp_path, german_checkpoint):
    started, block, log = tmp_path / "started", tmp_path / "block", tmp_path / "log"
    block.touch()
    auditors = (f"  fake_counter: {{log: {log}}}\n"
                f"  fake_blocking: {{started: {started}, block: {block}}}\n")
    spec = write_spec(tmp_path, german_checkpoint, ["fake_blocking.value == 2"], auditors)
    store = tmp_path / "store"
    proc = subprocess.Popen([TRUSTLAB, "audit", str(spec), "--store", str(store),
                             "--no-progress"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    reopened = ReportStore(store)
    assert reopened.list_runs() == [] and not list((store / "runs").glob("*/report.json"))
    assert reopened.rebuild_index() == 0
    assert log.read_text() == "ran\n"

    block.unlink()
    rerun = trustlab("audit", spec, "--store", store, "--no-progress")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert log.read_text() == "ran\n"  # finished before the interrupt: not run again
    assert "(cached)" in rerun.stderr
    runs = ReportStore(store).list_runs()
    assert len(runs) == 1 and runs[0]["status"] == "passed"
