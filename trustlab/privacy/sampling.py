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

import collections
import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Iterator, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset,
                              RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler)

from trustlab.errors import ConfigError
from trustlab.privacy.secure import SecureRandom

Sampling = torch.Generator | SecureRandom | None  # where the masks come from (None: torch's)


def population(data_loader: DataLoader) -> list[int] | None:
    """The dataset indices ``data_loader`` draws from: a ``SubsetRandomSampler``'s (a train
    split of a larger dataset), else None (all of them)."""
    for sampler in (data_loader.sampler, getattr(data_loader.batch_sampler, "sampler", None)):
        if isinstance(sampler, SubsetRandomSampler):
            return list(sampler.indices)
    return None


def population_size(data_loader: DataLoader) -> int:
    """How many samples ``data_loader`` draws from (the N of the expected batch size q·N)."""
    indices = population(data_loader)
    return len(data_loader.dataset) if indices is None else len(indices)  # type: ignore


class PoissonBatchSampler(Sampler[list[int]]):
    """``steps`` batches of the ``num_samples`` indices (``0..num_samples-1``, or the given
    ``indices``), each drawn with probability ``sample_rate``; with ``world_size > 1``, only
    those at positions ``i % world_size == rank``. The draws come from ``generator``: torch's
    (None: the default one) or a ``SecureRandom``."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int,
                 generator: Sampling = None, rank: int = 0, world_size: int = 1,
                 indices: list[int] | None = None) -> None:
        self.num_samples, self.sample_rate, self.steps = num_samples, sample_rate, steps
        self.generator, self.rank, self.world_size = generator, rank, world_size
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.long)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = self._uniform() < self.sample_rate
            chosen = mask.nonzero().flatten()
            if self.world_size > 1:
                chosen = chosen[chosen % self.world_size == self.rank]
            yield (chosen if self.indices is None else self.indices[chosen]).tolist()

    def _uniform(self) -> Tensor:
        if isinstance(self.generator, SecureRandom):
            return self.generator.uniform(self.num_samples)
        return torch.rand(self.num_samples, generator=self.generator)

    def __len__(self) -> int:
        return self.steps


class ReceivedBatches:
    """The batches the training loop has received from the loader ``make_private`` returned
    (its :class:`PoissonDataLoader`, or a ``BatchMemoryManager``'s logical batches, all parts
    counted) that no step has used yet, as their sample counts, oldest first: a loop may fetch
    ahead of its steps (a prefetching fetcher) or skip a batch."""

    def __init__(self) -> None:
        self.count = 0
        self.unstepped: collections.deque[int] = collections.deque()

    def new_batch(self, rows: int) -> None:
        self.count += 1
        self.unstepped.append(rows)

    def more_rows(self, rows: int) -> None:
        """Another physical part of the last logical batch."""
        self.unstepped[-1] += rows

    def take(self, rows: int) -> bool:
        """Mark the oldest unstepped batch of ``rows`` samples as stepped, and every batch
        received before it as skipped; False (nothing marked) when none has ``rows``."""
        if rows not in self.unstepped:
            return False
        while self.unstepped.popleft() != rows:
            pass
        return True


class CountedBatch(NamedTuple):
    """A collated batch and how many samples it holds, as the Poisson loader's workers hand it
    over; the loaders ``make_private`` and ``BatchMemoryManager`` return unwrap it."""

    batch: Any
    rows: int


class PoissonDataLoader(DataLoader):
    """``data_loader``'s dataset (the indices of its ``SubsetRandomSampler``, when it has one),
    collation and workers, with Poisson batches of rate ``sample_rate = 1 / len(data_loader)``
    (``len(data_loader)`` steps make one expected epoch) drawn from ``generator`` (None:
    torch's default generator; or a ``SecureRandom``). Empty batches have the structure, dtypes
    and shapes of a batch of the dataset's first sample, with 0 rows. ``received`` counts the
    batches received from it and their samples (what the optimizer checks each step against)."""

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
        indices = population(data_loader)
        first = dataset[0 if indices is None else indices[0]]
        empty = _no_rows(data_loader.collate_fn([first]), data_loader.collate_fn([first, first]))
        collate = CollateOrEmpty(data_loader.collate_fn, empty)
        sampler = PoissonBatchSampler(population_size(data_loader), self.sample_rate, steps,
                                      generator, rank, world_size, indices)
        options = loading_options(data_loader)
        if not isinstance(generator, SecureRandom):  # worker seeds follow the sampling stream
            options["generator"] = generator
        super().__init__(dataset, batch_sampler=sampler, collate_fn=collate, **options)
        self.received = ReceivedBatches()

    def __iter__(self) -> Iterator:
        for counted in super().__iter__():
            self.received.new_batch(counted.rows)
            yield counted.batch


class CollateOrEmpty:
    """``collate`` for a non-empty batch, ``empty`` (the batch of no samples) for an empty one;
    either as a :class:`CountedBatch`."""

    def __init__(self, collate: Callable[[list], Any], empty: Any) -> None:
        self.collate, self.empty = collate, empty

    def __call__(self, samples: list) -> CountedBatch:
        return CountedBatch(self.collate(samples) if samples else self.empty, len(samples))


def _no_rows(one: Any, two: Any) -> Any:
    """The batch of no samples, from ``one`` and ``two``: a collate function's batches of one
    sample and of that sample twice. What grows with the samples (a tensor's dim 0, a sequence
    of per-sample values) is cut to none; the structure (dicts, dataclasses, tuples of fields)
    is kept; a type it cannot see into is a ConfigError (its empty batch would hold the
    sample)."""
    if isinstance(one, Tensor):
        grows = one.dim() > 0 and two.dim() > 0 and two.shape[0] == 2 * one.shape[0]
        return one[:0] if grows else one
    if isinstance(one, Mapping):
        return type(one)({k: _no_rows(v, two[k]) for k, v in one.items()})  # type: ignore
    if dataclasses.is_dataclass(one) and not isinstance(one, type):
        return dataclasses.replace(one, **{
            f.name: _no_rows(getattr(one, f.name), getattr(two, f.name))
            for f in dataclasses.fields(one) if f.init})
    if isinstance(one, tuple) and hasattr(one, "_fields"):  # a namedtuple
        return type(one)(*(_no_rows(a, b) for a, b in zip(one, two)))
    if isinstance(one, list | tuple):
        if len(two) == 2 * len(one):  # one value per sample
            return type(one)()
        return type(one)(_no_rows(a, b) for a, b in zip(one, two))
    if one is None or isinstance(one, str | bytes | int | float | bool):
        return one
    raise ConfigError(
        f"the data loader's collate_fn returns a {type(one).__name__} inside its batches, "
        "which trustlab cannot cut to the empty batch an empty Poisson draw needs (it would "
        "hold a sample). Collate into tensors, dicts, tuples, lists or dataclasses")


def _warn_if_replaced(data_loader: DataLoader) -> None:
    """Poisson sampling replaces how the loader chose its batches; say so when that was more
    than shuffling (a weighted sampler, bucketing by length): the privacy analysis needs every
    sample drawn alike, so the choice is dropped, not kept."""
    plain = (SequentialSampler, RandomSampler, DistributedSampler, SubsetRandomSampler)
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
