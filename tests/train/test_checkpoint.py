"""Checkpoints: round trip, corruption and pickles refused, never executed."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from trustlab.errors import CheckpointError, ConfigError
from trustlab.train.checkpoint import check_writable, load_checkpoint
from trustlab.train.subject import Subject
from trustlab.train.trainer import TrainSettings, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    trained = train("mlp", "german", settings=TrainSettings(epochs=2), out=out,
                    show_progress=False)
    return out, trained


def test_round_trip_gives_the_same_predictions(checkpoint):
    out, trained = checkpoint
    subject = Subject.from_checkpoint(out)
    X = subject.split("test").X
    np.testing.assert_array_equal(subject.logits(X), trained.model(torch.from_numpy(X)).detach())
    np.testing.assert_array_equal(X, trained.data.splits["test"].X)
    assert subject.meta["metrics"] == trained.meta["metrics"]


def test_meta_records_what_later_stages_need(checkpoint):
    meta = json.loads((checkpoint[0] / "meta.json").read_text())
    assert {"arch", "config", "input_spec", "data", "training", "metrics", "versions"} <= set(meta)
    assert meta["data"]["seed"] == 0 and meta["data"]["preprocessing"]["means"]
    assert 0 <= meta["metrics"]["test_accuracy"] <= 1
    assert meta["training"]["members_split"] == "train"


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/trustlab-pwned", "w"))


def test_pickle_checkpoint_is_refused_not_executed(checkpoint, tmp_path):
    out = checkpoint[0]
    (tmp_path / "meta.json").write_bytes((out / "meta.json").read_bytes())
    for payload in (pickle.dumps(_Exploit()), None):
        if payload is None:
            torch.save({"w": torch.zeros(1)}, tmp_path / "model.safetensors")
        else:
            (tmp_path / "model.safetensors").write_bytes(payload)
        with pytest.raises(CheckpointError, match="pickle.*refused"):
            load_checkpoint(tmp_path)
    import os
    assert not os.path.exists("/tmp/trustlab-pwned")


def test_corrupted_weights(checkpoint, tmp_path):
    out = checkpoint[0]
    (tmp_path / "meta.json").write_bytes((out / "meta.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(tmp_path)


def test_corrupted_meta(checkpoint, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((checkpoint[0] / "model.safetensors").read_bytes())
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is not valid JSON"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="meta.json not found"):
        load_checkpoint(tmp_path)


def test_unusable_out_directory_is_named(tmp_path):
    existing = tmp_path / "a-file"
    existing.write_text("")
    with pytest.raises(ConfigError, match=f"{existing} is an existing file"):
        check_writable(existing)
    with pytest.raises(ConfigError, match=f"cannot write the checkpoint directory {existing}/m"):
        check_writable(existing / "m")
    check_writable(tmp_path / "new" / "m")  # created, parents included
    assert (tmp_path / "new" / "m").is_dir() and not any((tmp_path / "new" / "m").iterdir())
