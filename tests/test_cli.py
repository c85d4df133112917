"""The real `trustlab` command in a subprocess: success, and bad input with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from trustlab.audit.report import Report
from trustlab.audit.store import ReportStore
from trustlab.cli import EXIT_BAD_INPUT, build_parser, main
from trustlab.train import trainer

TRUSTLAB = [sys.executable, "-m", "trustlab.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TRUSTLAB, *args], capture_output=True, text=True, timeout=300)


def test_train_writes_a_checkpoint(tmp_path):
    out = tmp_path / "m"
    proc = run("train", "--arch", "mlp", "--dataset", "german", "--epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and (out / "meta.json").is_file()


@pytest.mark.parametrize("options", [("--secure-mode", "--clipping", "adaptive"),
                                     ("--clipping", "per_layer", "--max-grad-norm", "2")])
def test_private_training_records_its_options(tmp_path, options):
    out = tmp_path / "m"
    proc = run("train", "--arch", "mlp", "--dataset", "german", "--epochs", "2", "--dp",
               "--target-epsilon", "2", *options, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    privacy = json.loads((out / "meta.json").read_text())["privacy"]
    assert re.search(rf"saved {out}: test_loss=.*, ε={privacy['epsilon']:.2f} at δ=1e-05$",
                     proc.stdout.strip())
    assert privacy["secure_mode"] is ("--secure-mode" in options)
    assert privacy["clipping"] == options[options.index("--clipping") + 1]
    assert privacy["epsilon"] <= 2.0 and privacy["target_epsilon"] == 2.0
    if privacy["clipping"] == "adaptive":  # the bound moved from --max-grad-norm's default
        assert privacy["max_grad_norm"] != 1.0
    else:  # the per-layer bounds' norm: the sensitivity given
        assert privacy["max_grad_norm"] == pytest.approx(2.0)


@pytest.mark.parametrize("args, message", [
    (("--arch", "nope", "--dataset", "adult"), "unknown arch 'nope'"),
    (("--arch", "mlp", "--dataset", "nope"), "unknown dataset 'nope'"),
    (("--arch", "cnn", "--dataset", "adult"), "takes image data"),
])
def test_bad_names_exit_2(tmp_path, args, message):
    proc = run("train", *args, "--out", str(tmp_path / "m"))
    assert proc.returncode == 2
    assert message in proc.stderr


def test_bad_data_path_exits_2(tmp_path):
    proc = run("train", "--arch", "mlp", "--dataset", "adult", "--data-path", str(tmp_path),
               "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "adult.data" in proc.stderr


def test_demo_quick_fills_a_store(tmp_path):
    proc = run("demo", "--quick", "--store", str(tmp_path / "store"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    listing = run("runs", "--store", str(tmp_path / "store"))
    assert "adult-mlp" in listing.stdout and "digits-cnn" in listing.stdout


def no_training(*args, **kwargs):
    raise AssertionError("training started before the bad input was caught")


@pytest.mark.parametrize("args, message", [
    (("--device", "cuda"), "CUDA is not available here"),
    (("--lr", "-1"), "lr (the learning rate) must be > 0, got -1.0"),
    (("--batch-size", "0"), "batch_size must be >= 1, got 0"),
    (("--epochs", "0"), "epochs must be >= 1, got 0"),
    (("--epochs", "-2"), "epochs must be >= 1, got -2"),
    (("--dp", "--batch-size", "1024"), "batch size 1024 is not below the 599 training rows"),
    (("--target-epsilon", "3"), "--target-epsilon needs --dp"),
    (("--delta", "1e-6"), "--delta needs --dp"),
    (("--max-grad-norm", "2"), "--max-grad-norm needs --dp"),
    (("--accountant", "prv"), "--accountant needs --dp"),
    (("--clipping", "automatic"), "--clipping needs --dp"),
    (("--secure-mode",), "--secure-mode needs --dp"),
    (("--adv-method", "madry"), "--adv-method needs --adv-train"),
    (("--adv-eps", "0.2"), "--adv-eps needs --adv-train"),
    (("--adv-steps", "5"), "--adv-steps needs --adv-train"),
])
def test_train_mistakes_exit_2_before_training(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr(trainer, "fit", no_training)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code = main(["train", "--arch", "mlp", "--dataset", "german", "--out", str(tmp_path / "m"),
                 *args])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and message in err and err.count("\n") == 1, err


def test_unusable_out_exits_2_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer, "fit", no_training)
    existing = tmp_path / "file"
    existing.write_text("")
    for out, message in ((existing, f"{existing} is an existing file"),
                         (existing / "m", f"cannot write the checkpoint directory {existing}/m")):
        code = main(["train", "--arch", "mlp", "--dataset", "german", "--out", str(out)])
        assert code == EXIT_BAD_INPUT and message in capsys.readouterr().err


def test_every_train_option_has_help_with_its_default():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {a.dest: a.help for a in train._actions if a.option_strings and a.dest != "help"}
    assert all(options.values()), [dest for dest, text in options.items() if not text]
    for dest, default in (("seed", "0"), ("optimizer", "adamw"), ("device", "auto"),
                          ("target_epsilon", "3.0"), ("delta", "1e-05"),
                          ("max_grad_norm", "1.0"), ("accountant", "rdp"), ("clipping", "flat"),
                          ("adv_method", "trades"), ("adv_eps", "0.1"), ("adv_steps", "10")):
        assert f"default: {default})" in options[dest], dest
    for dest in ("epochs", "lr", "batch_size", "data_path"):
        assert "default: " in options[dest], dest


def _store_with_run(root) -> str:
    run_id = "20261122-153115-adult-mlp-dp-0a1b2c"
    ReportStore(root).save(Report(run_id=run_id, subject={"name": "adult-mlp-dp"}, results=[],
                                  created="2026-11-22T15:31:15Z"))
    return run_id


@pytest.mark.parametrize("terminal", [True, False])
def test_runs_prints_whole_ids_on_a_narrow_console(tmp_path, monkeypatch, capsys, terminal):
    run_id = _store_with_run(tmp_path / "store")
    monkeypatch.setenv("COLUMNS", "50")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")
    assert main(["runs", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert run_id in out
    if not terminal:  # piped: tab-separated, for scripts
        assert out.splitlines()[1].split("\t")[:3] == [run_id, "2026-11-22T15:31:15Z",
                                                       "adult-mlp-dp"]


def test_read_commands_refuse_a_missing_store(tmp_path, capsys):
    typo = tmp_path / "typo"
    for args in (["runs"], ["card", "some-run"]):
        assert main([*args, "--store", str(typo)]) == EXIT_BAD_INPUT
        assert f"report store {typo} does not exist" in capsys.readouterr().err
    assert not typo.exists()


def test_card_of_an_unknown_run_exits_2(tmp_path, capsys):
    _store_with_run(tmp_path / "store")
    assert main(["card", "nope", "--store", str(tmp_path / "store")]) == EXIT_BAD_INPUT
    assert "run 'nope' not found" in capsys.readouterr().err


def test_python_dash_m_trustlab_is_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trustlab", "runs", "--store",
                           str(tmp_path / "typo")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_BAD_INPUT and "trustlab: error: report store" in proc.stderr
