"""Two gloo ranks on the CPU give the same DP step as one process on the whole batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustlab.privacy import make_private


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g), torch.randint(0, 2, (8,), generator=g)


def _step(x: torch.Tensor, y: torch.Tensor, batch: int, distributed: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    model, opt, _ = make_private(model, opt, loader, noise_multiplier=0.8, max_grad_norm=0.2,
                                 target_delta=1e-5, poisson_sampling=False, noise_seed=7,
                                 distributed=distributed)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, y = _data()
    params = _step(x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4], 4, True)
    torch.save(params, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_equal_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    single = _step(*_data(), batch=8, distributed=False)
    for rank in range(2):
        for a, b in zip(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True), single):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
