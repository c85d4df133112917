"""Logical batches larger than memory, run as physical batches (Opacus's BatchMemoryManager).

The data loader's batch sampler is wrapped so that each logical batch of indices comes out as
chunks of at most ``max_physical_batch_size`` (an empty Poisson batch as one empty chunk: its
step still adds noise and is accounted). Whether a chunk ends its logical batch is queued as the
sampler produces it and read back, in order, as the training loop receives the batch, so the
optimizer is told to skip or take the step at the right batch even when worker processes
prefetch ahead. Only physical batches are ever loaded.
"""

from __future__ import annotations

import collections
import math
from typing import Iterator, Sized

from torch.utils.data import DataLoader, Sampler

from trustlab.errors import ConfigError
from trustlab.privacy.optimizer import DPOptimizer
from trustlab.privacy.sampling import CountedBatch, loading_options


class _SplitBatchSampler(Sampler[list[int]]):
    """Each batch of ``batch_sampler`` as chunks of at most ``size`` indices; whether each chunk
    ends its batch is appended to ``ends``."""

    def __init__(self, batch_sampler: Sampler[list[int]], size: int, expected: float,
                 ends: collections.deque[bool]) -> None:
        self.batch_sampler, self.size, self.expected, self.ends = (batch_sampler, size,
                                                                   expected, ends)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            batch = list(batch)
            chunks = [batch[i:i + self.size] for i in range(0, len(batch), self.size)] or [[]]
            for k, chunk in enumerate(chunks):
                self.ends.append(k == len(chunks) - 1)
                yield chunk

    def __len__(self) -> int:
        """Expected number of physical batches (Poisson batch sizes vary)."""
        logical = len(self.batch_sampler)  # type: ignore[arg-type]
        return logical * max(1, math.ceil(self.expected / self.size))


class _PhysicalBatches:
    """The loader of physical batches; tells the optimizer, batch by batch, whether to step."""

    def __init__(self, loader: DataLoader, optimizer: DPOptimizer,
                 ends: collections.deque[bool]) -> None:
        self.loader, self.optimizer, self.ends = loader, optimizer, ends

    def __iter__(self) -> Iterator:
        self.ends.clear()
        self.optimizer.discard_accumulated()  # a loop left mid-batch and started again
        starts_logical_batch = True
        for batch in self.loader:
            ends_logical_batch = self.ends.popleft()
            self.optimizer.signal_skip_step(not ends_logical_batch)
            if isinstance(batch, CountedBatch):  # from make_private's Poisson loader
                received = self.optimizer.received
                if received is not None:
                    (received.new_batch if starts_logical_batch else received.more_rows)(
                        batch.rows)
                batch = batch.batch
            starts_logical_batch = ends_logical_batch
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


class BatchMemoryManager:
    """Context manager: iterate ``data_loader``'s logical batches as physical batches of at most
    ``max_physical_batch_size`` samples; ``optimizer.step()`` steps once per logical batch.

    >>> with BatchMemoryManager(data_loader=loader, max_physical_batch_size=64,
    ...                         optimizer=optimizer) as physical_loader:
    ...     for x, y in physical_loader:
    ...         optimizer.zero_grad()
    ...         loss_fn(model(x), y).backward()
    ...         optimizer.step()  # a real step only at the end of a logical batch
    """

    def __init__(self, *, data_loader: DataLoader, max_physical_batch_size: int,
                 optimizer: DPOptimizer) -> None:
        if max_physical_batch_size < 1:
            raise ConfigError(f"max_physical_batch_size must be >= 1, got "
                              f"{max_physical_batch_size}")
        if data_loader.batch_sampler is None:
            raise ConfigError("BatchMemoryManager needs a data loader that batches (the one "
                              "make_private returned), not one with batch_size=None")
        if not isinstance(data_loader.dataset, Sized):
            raise ConfigError("BatchMemoryManager needs a map-style dataset with a length")
        self.data_loader = data_loader
        self.max_physical_batch_size = max_physical_batch_size
        self.optimizer = optimizer

    def __enter__(self) -> _PhysicalBatches:
        loader, ends = self.data_loader, collections.deque()
        sampler = _SplitBatchSampler(loader.batch_sampler, self.max_physical_batch_size,
                                     self.optimizer.expected_batch_size, ends)
        physical = DataLoader(loader.dataset, batch_sampler=sampler,
                              collate_fn=loader.collate_fn, **loading_options(loader))
        return _PhysicalBatches(physical, self.optimizer, ends)

    def __exit__(self, *exc: object) -> None:
        self.optimizer.discard_accumulated()  # a logical batch left unfinished is not stepped
