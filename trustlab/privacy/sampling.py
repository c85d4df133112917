"""Poisson sampling for DP-SGD: each step, every sample joins the batch independently with
probability ``q = 1 / len(data_loader)``; empty batches are yielded (their step still adds noise
and is accounted).

Distributed, every rank draws the same mask over the whole dataset (from a generator whose state
rank 0 broadcast) and keeps the indices of its share (index mod world size = rank): the ranks'
batches together are exactly the single-process batch, and every rank yields one batch per step,
an empty share included, so their collectives stay paired step by step. (Opacus's distributed
sampler draws each rank's mask apart and skips a rank's empty batches: ranks then run different
numbers of steps, pair different steps' sums in the all-reduce, and the last one waits forever.)
"""

from __future__ import annotations

import warnings
from typing import Iterator

import torch
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from torch import Tensor
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset,
                              RandomSampler, Sampler, SequentialSampler)

from trustlab.errors import ConfigError
from trustlab.privacy.secure import SecureRandom

Sampling = torch.Generator | SecureRandom | None  # where the masks come from (None: torch's)


class PoissonBatchSampler(Sampler[list[int]]):
    """``steps`` batches of the indices ``i < num_samples`` drawn with probability
    ``sample_rate`` each; with ``world_size > 1``, only those with ``i % world_size == rank``.
    The draws come from ``generator``: torch's (None: the default one) or a ``SecureRandom``."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int,
                 generator: Sampling = None, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.sample_rate, self.steps = num_samples, sample_rate, steps
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = self._uniform() < self.sample_rate
            chosen = mask.nonzero().flatten()
            if self.world_size > 1:
                chosen = chosen[chosen % self.world_size == self.rank]
            yield chosen.tolist()

    def _uniform(self) -> Tensor:
        if isinstance(self.generator, SecureRandom):
            return self.generator.uniform(self.num_samples)
        return torch.rand(self.num_samples, generator=self.generator)

    def __len__(self) -> int:
        return self.steps


class PoissonDataLoader(DataLoader):
    """``data_loader``'s dataset, collation and workers, with Poisson batches of rate
    ``sample_rate = 1 / len(data_loader)`` (``len(data_loader)`` steps make one expected epoch)
    drawn from ``generator`` (None: torch's default generator; or a ``SecureRandom``). Empty
    batches keep the shapes of the dataset's first sample (0 rows)."""

    def __init__(self, data_loader: DataLoader, *, generator: Sampling, rank: int = 0,
                 world_size: int = 1) -> None:
        dataset = data_loader.dataset
        if isinstance(dataset, IterableDataset):
            raise ConfigError("Poisson sampling needs a map-style dataset (indexable, with a "
                              "length), not an IterableDataset; or pass poisson_sampling=False")
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ConfigError("Poisson sampling needs a non-empty dataset; the data loader's "
                              "dataset has no samples")
        _warn_if_replaced(data_loader)
        steps = len(data_loader)
        self.sample_rate = 1 / steps
        first = dataset[0]
        collate = wrap_collate_with_empty(
            collate_fn=data_loader.collate_fn, batch_first=True,
            sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
            dtypes=[dtype_safe(x) for x in first])
        sampler = PoissonBatchSampler(len(dataset), self.sample_rate, steps,  # type: ignore
                                      generator, rank, world_size)
        options = loading_options(data_loader)
        if not isinstance(generator, SecureRandom):  # worker seeds follow the sampling stream
            options["generator"] = generator
        super().__init__(dataset, batch_sampler=sampler, collate_fn=collate, **options)


def _warn_if_replaced(data_loader: DataLoader) -> None:
    """Poisson sampling replaces how the loader chose its batches; say so when that was more
    than shuffling (a weighted sampler, bucketing by length): the privacy analysis needs every
    sample drawn alike, so the choice is dropped, not kept."""
    plain = (SequentialSampler, RandomSampler, DistributedSampler)
    custom = [type(s).__name__ for s in (data_loader.sampler, data_loader.batch_sampler)
              if s is not None and not isinstance(s, (*plain, BatchSampler))]
    if custom:
        warnings.warn(f"Poisson sampling replaces the data loader's {' and '.join(custom)}: "
                      "every sample joins each batch with the same probability; weights or "
                      "bucketing are not applied", stacklevel=3)


def loading_options(data_loader: DataLoader) -> dict:
    """``data_loader``'s worker, pinning and seeding options, for a loader of other batches."""
    workers = ({"prefetch_factor": data_loader.prefetch_factor,
                "persistent_workers": data_loader.persistent_workers}
               if data_loader.num_workers else {})
    return dict(num_workers=data_loader.num_workers, pin_memory=data_loader.pin_memory,
                timeout=data_loader.timeout, worker_init_fn=data_loader.worker_init_fn,
                multiprocessing_context=data_loader.multiprocessing_context,
                generator=data_loader.generator, **workers)
