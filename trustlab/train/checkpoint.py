"""Checkpoints: ``model.safetensors`` + ``meta.json``; loading never unpickles anything."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from trustlab.errors import CheckpointError, ConfigError
from trustlab.train.zoo import InputSpec, build_model

FORMAT = "trustlab-checkpoint/1"
WEIGHTS = "model.safetensors"
META = "meta.json"
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a raw pickle, or torch.save's zip archive


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def check_writable(directory: str | Path) -> None:
    """Create checkpoint ``directory`` (if needed) and check a file can be written in it, so a
    bad ``out`` fails before training rather than after; raises ConfigError naming the path."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"checkpoint directory {directory} is an existing file: pass a "
                          "directory path (it is created if missing)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        raise ConfigError(f"cannot write the checkpoint directory {directory}: "
                          f"{exc.strerror or exc}") from exc


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write the weights and metadata of ``model`` to ``directory`` (atomically, file by file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, directory / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(directory / META, {"format": FORMAT, **meta})
    return directory


def read_meta(directory: str | Path) -> dict:
    """The checkpoint's meta.json, validated enough to rebuild the model."""
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a checkpoint directory holds {WEIGHTS} and {META}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: field 'format' must be {FORMAT!r}")
    for key in ("arch", "config", "input_spec"):
        if key not in meta:
            raise CheckpointError(f"{path}: required field {key!r} is missing")
    return meta


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint from its meta.json and load its safetensors weights."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    with weights.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(PICKLE_MAGIC):
        raise CheckpointError(f"{weights} is a pickle/torch.save file, not safetensors: refused "
                              "(unpickling can run arbitrary code); re-save it with "
                              "safetensors.torch.save_file(model.state_dict(), ...)")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is corrupted or not a safetensors file: {exc}") from exc
    model = build_model(meta["arch"], InputSpec(**meta["input_spec"]), meta["config"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match arch {meta['arch']!r} "
                              f"with config {meta['config']}: {exc}") from exc
    return model.eval(), meta
