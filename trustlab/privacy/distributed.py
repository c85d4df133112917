"""Distributed DP-SGD over ``torch.distributed``: every rank draws the same Poisson mask and
trains on its share of it, clips its own samples, the clipped sums (and the sample counts) are
all-reduced in one flat buffer, and every rank adds the same noise once (shared seed)."""

from __future__ import annotations

import secrets

import torch
import torch.distributed as dist
from torch import Tensor

from trustlab.errors import ConfigError


def require_group() -> tuple[int, int]:
    """(rank, world size) of the default process group, which must be initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("distributed=True needs torch.distributed.init_process_group(...) "
                          "to have been called on every rank first")
    return dist.get_rank(), dist.get_world_size()


def _from_rank0(value: Tensor) -> Tensor:
    """Rank 0's ``value`` (a CPU tensor) on every rank; NCCL moves it through the GPU."""
    on_device = value.cuda() if dist.get_backend() == "nccl" else value
    dist.broadcast(on_device, src=0)
    return on_device.cpu()


def shared_seed(seed: int | None) -> int:
    """The noise seed every rank uses: ``seed`` if given (must match), else rank 0's draw."""
    value = torch.tensor([secrets.randbits(62) if seed is None else seed], dtype=torch.int64)
    return int(_from_rank0(value).item())


def shared_key(n_bytes: int) -> bytes:
    """``n_bytes`` from rank 0's CSPRNG, the same on every rank (secure mode's stream keys)."""
    key = torch.frombuffer(bytearray(secrets.token_bytes(n_bytes)), dtype=torch.uint8)
    return _from_rank0(key).numpy().tobytes()


def shared_generator(generator: torch.Generator | None) -> torch.Generator:
    """A CPU generator on every rank in rank 0's ``generator`` state (the default generator's
    when None), so all ranks draw the same sampling masks as one process would."""
    shared = torch.Generator()
    shared.set_state(_from_rank0((generator or torch.default_generator).get_state()))
    return shared


def all_reduce_sums(sums: list[Tensor], counts: list[float]
                    ) -> tuple[list[Tensor], list[float]]:
    """Each tensor and each count (samples, unclipped samples) summed over ranks, in one
    collective."""
    extra = sums[0].new_tensor(counts)  # counts are exact in float32 up to 2^24 a step
    flat = torch.cat([s.reshape(-1) for s in sums] + [extra])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    chunks = flat[:-len(counts)].split([s.numel() for s in sums])
    return ([chunk.view_as(s) for chunk, s in zip(chunks, sums)],
            flat[-len(counts):].tolist())
