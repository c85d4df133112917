"""Two gloo ranks on the CPU train exactly as one process on the whole batch, with fixed
batches (DistributedSampler) and with Poisson batches (empty shares included)."""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trustlab.errors import ConfigError
from trustlab.privacy import make_private


def _dataset(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 2, (n,), generator=g))


def _train(loader: DataLoader, poisson: bool, distributed: bool, secure: bool = False,
           **options) -> dict:
    """One epoch of DP-SGD; the final parameters, ε, the bound and each batch's size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model, opt, loader = make_private(model, opt, loader, noise_multiplier=0.8,
                                      max_grad_norm=0.2, target_delta=1e-5,
                                      noise_seed=None if secure else 7, secure_mode=secure,
                                      poisson_sampling=poisson, distributed=distributed,
                                      **options)
    sizes = []
    for x, y in loader:
        sizes.append(len(x))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {"params": [p.detach().clone() for p in model.parameters()], "sizes": sizes,
            "steps": opt.steps, "samples_seen": opt.samples_seen,
            "sample_rate": opt.sample_rate, "epsilon": opt.epsilon(1e-5),
            "max_grad_norm": opt.max_grad_norm}


def _fixed_loader(rank: int | None) -> DataLoader:  # rank None: one process, whole batch
    data = _dataset(8)
    if rank is None:
        return DataLoader(data, batch_size=8)
    return DataLoader(data, batch_size=4,
                      sampler=DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False))


def _poisson_loader(rank: int | None) -> DataLoader:
    # q = 1/12, one sample expected per step: a rank's share is often empty
    return DataLoader(_dataset(24), batch_size=2, generator=torch.Generator().manual_seed(3))


# kind: (loader maker, Poisson sampling, make_private options)
LOADERS = {"fixed": (_fixed_loader, False, {}), "poisson": (_poisson_loader, True, {}),
           "adaptive": (_poisson_loader, True, {"clipping": "adaptive",
                                                "unclipped_num_std": 1.0}),
           "per_layer": (_poisson_loader, True, {"clipping": "per_layer"})}


def _worker(rank: int, port: int, kind: str, secure: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))  # fail, never hang
    make_loader, poisson, options = LOADERS[kind]
    torch.save(_train(make_loader(rank), poisson, distributed=True, secure=secure, **options),
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _run_two_ranks(kind: str, secure: bool, out) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, kind, secure, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_two_ranks_train_as_one_process(kind, tmp_path):
    ranks = _run_two_ranks(kind, False, tmp_path)
    make_loader, poisson, options = LOADERS[kind]
    single = _train(make_loader(None), poisson, distributed=False, **options)
    for result in ranks:
        for a, b in zip(result["params"], single["params"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for key in ("steps", "samples_seen", "sample_rate", "epsilon", "max_grad_norm"):
            assert result[key] == pytest.approx(single[key], rel=1e-9), key
    # every rank stepped once per batch of the single process, on its share of that batch
    shares = [sum(pair) for pair in zip(ranks[0]["sizes"], ranks[1]["sizes"])]
    assert shares == single["sizes"]
    if poisson:
        assert single["sample_rate"] == pytest.approx(1 / 12) and single["steps"] == 12
        assert 0 in ranks[0]["sizes"] + ranks[1]["sizes"]


def test_two_ranks_in_secure_mode_share_noise_and_masks(tmp_path):
    """Rank 0's stream keys reach every rank: the same noise (identical parameters after an
    epoch) and the same masks (one batch per step on both ranks, an empty share included)."""
    ranks = _run_two_ranks("poisson", True, tmp_path)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 12
    assert ranks[0]["samples_seen"] == ranks[1]["samples_seen"]
    assert 0 in ranks[0]["sizes"] + ranks[1]["sizes"]


def test_fixed_batches_without_a_distributed_sampler_are_refused():
    model = nn.Linear(5, 2)
    loader = DataLoader(_dataset(8), batch_size=4)
    with pytest.raises(ConfigError, match="DistributedSampler"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                     noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5,
                     poisson_sampling=False, distributed=True)
