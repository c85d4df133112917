"""BatchMemoryManager: logical batches run as physical ones give the logical batch's step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp_reference import train_steps
from trustlab.errors import ConfigError
from trustlab.privacy import BatchMemoryManager, compute_epsilon, make_private


def _setup(n: int, batch: int, num_workers: int = 0, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    data = TensorDataset(torch.randn(n, 5), torch.randint(0, 2, (n,)))
    loader = DataLoader(data, batch_size=batch, num_workers=num_workers)
    args = dict(noise_multiplier=1.0, max_grad_norm=0.5, target_delta=1e-5, noise_seed=0)
    return make_private(model, torch.optim.SGD(model.parameters(), lr=0.5), loader,
                        **{**args, **kwargs})


@pytest.mark.parametrize("num_workers, clipping", [(0, "flat"), (2, "flat"), (0, "per_layer")])
def test_physical_batches_give_the_logical_batch_steps(num_workers, clipping):
    """Logical batches of 12 as physical ones of at most 5 (5, 5, 2): the same noisy steps as
    the whole batches, one step and one accounting per logical batch, even with worker
    processes prefetching batches ahead of the loop (or layers clipped during backward)."""
    model, opt, loader = _setup(36, 12, poisson_sampling=False, clipping=clipping)
    train_steps(model, opt, loader)
    want = [p.detach().clone() for p in model.parameters()]
    model, opt, loader = _setup(36, 12, num_workers, poisson_sampling=False, clipping=clipping)
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=5,
                            optimizer=opt) as physical:
        sizes = train_steps(model, opt, physical)
    assert sizes == [5, 5, 2] * 3
    assert opt.steps == 3
    for got, ref in zip(model.parameters(), want):
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_poisson_logical_batches_empty_ones_included(num_workers):
    """Every Poisson batch (empty ones too) is one step; no physical batch exceeds the limit;
    each step's rows are its logical batch's (the optimizer counts them against the clipped
    rows), also when worker processes collate the batches."""
    model, opt, loader = _setup(60, 3, num_workers)  # q = 0.05: about 1 in 20 is empty
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=1,
                            optimizer=opt) as physical:
        sizes = [s for _ in range(3) for s in train_steps(model, opt, physical)]
    assert max(sizes) == 1 and 0 in sizes
    assert opt.steps == 3 * len(loader) and sum(sizes) == opt.samples_seen
    assert opt.epsilon(1e-5) == pytest.approx(compute_epsilon(1.0, 0.05, opt.steps, 1e-5),
                                              rel=1e-6)


def test_a_logical_batch_left_unfinished_is_not_stepped_later():
    model, opt, loader = _setup(24, 12, poisson_sampling=False)
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=5,
                            optimizer=opt) as physical:
        for x, y in physical:  # the first 5 of 12 samples, then the loop is left
            F.cross_entropy(model(x), y).backward()
            opt.step()
            break
    assert opt.steps == 0 and opt.tracker.samples == 0 and not opt.tracker.summed
    opt.zero_grad()
    x, y = loader.dataset[:12]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert opt.steps == 1 and opt.samples_seen == 12


def test_a_loop_left_mid_batch_can_start_again_inside_the_manager():
    """Its partial clipped sums were kept and joined the next logical batch's: refused as more
    rows than the batch holds."""
    model, opt, loader = _setup(60, 3)
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=1,
                            optimizer=opt) as physical:
        for x, y in physical:
            opt.zero_grad()
            steps = opt.steps
            if len(x):
                F.cross_entropy(model(x), y).backward()
            opt.step()
            if opt.steps == steps:  # a part of a logical batch: left in the middle
                break
        train_steps(model, opt, physical)
    assert opt.steps >= len(loader)


def test_step_hooks_run_once_per_logical_batch():
    """They ran on every physical part too: an EMA of the weights in a post hook averaged 27
    times over 6 real steps."""
    model, opt, loader = _setup(60, 3)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=1,
                            optimizer=opt) as physical:
        sizes = train_steps(model, opt, physical)
    assert len(sizes) > opt.steps == len(loader)
    assert calls == ["pre", "post"] * opt.steps


def test_bad_physical_batch_size_is_a_clear_error():
    model, opt, loader = _setup(12, 4)
    with pytest.raises(ConfigError, match="max_physical_batch_size"):
        BatchMemoryManager(data_loader=loader, max_physical_batch_size=0, optimizer=opt)
