"""The real `trustlab` command in a subprocess: success, and bad input with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
