"""Distributed DP-SGD over ``torch.distributed``: each rank clips its own samples, the clipped
sums are all-reduced (one flat buffer), and every rank adds the same noise once (shared seed)."""

from __future__ import annotations

import secrets

import torch
import torch.distributed as dist
from torch import Tensor

from trustlab.errors import ConfigError


def _require_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("distributed=True needs torch.distributed.init_process_group(...) "
                          "to have been called on every rank first")


def shared_seed(seed: int | None) -> int:
    """The noise seed every rank uses: ``seed`` if given (must match), else rank 0's draw."""
    _require_group()
    value = torch.tensor([secrets.randbits(62) if seed is None else seed], dtype=torch.int64)
    dist.broadcast(value, src=0)
    return int(value.item())


def all_reduce_sums(sums: list[Tensor]) -> list[Tensor]:
    """Sum each tensor over ranks in one collective."""
    if not sums:
        return sums
    flat = torch.cat([s.reshape(-1) for s in sums])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return [chunk.view_as(s) for chunk, s in zip(flat.split([s.numel() for s in sums]), sums)]
