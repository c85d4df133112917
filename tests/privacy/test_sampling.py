"""Poisson batch sampling: Opacus's draws in one process, exact shares of them on several ranks."""

from __future__ import annotations

import dataclasses

import warnings

import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from trustlab.errors import ConfigError
from trustlab.privacy.sampling import PoissonBatchSampler, PoissonDataLoader
from trustlab.privacy.secure import SecureRandom


def _batches(sampler) -> list[list[int]]:
    return [list(batch) for batch in sampler]


def test_one_process_draws_opacus_batches():
    ours = PoissonBatchSampler(50, 0.1, 30, torch.Generator().manual_seed(4))
    theirs = UniformWithReplacementSampler(num_samples=50, sample_rate=0.1, steps=30,
                                           generator=torch.Generator().manual_seed(4))
    assert _batches(ours) == _batches(theirs)


def test_ranks_split_each_batch_and_yield_empty_shares():
    whole = _batches(PoissonBatchSampler(40, 0.05, 60, torch.Generator().manual_seed(2)))
    shares = [_batches(PoissonBatchSampler(40, 0.05, 60, torch.Generator().manual_seed(2),
                                           rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 60 for s in shares)  # one batch per step on every rank
    for step, batch in enumerate(whole):
        parts = [shares[r][step] for r in range(3)]
        assert sorted(sum(parts, [])) == batch
        assert all(i % 3 == r for r, part in enumerate(parts) for i in part)
    assert any(not shares[r][step] for r in range(3) for step in range(60))


@pytest.mark.parametrize("generator", [torch.Generator().manual_seed(0),
                                       SecureRandom(bytes(32))], ids=["torch", "secure"])
def test_batch_sizes_follow_the_sampling_rate(generator):
    sizes = torch.tensor([len(b) for b in PoissonBatchSampler(1000, 0.02, 2000, generator)],
                         dtype=torch.float64)
    # Binomial(1000, 0.02): mean 20, variance 19.6; 2000 batches put the mean within 0.1
    assert abs(sizes.mean().item() - 20) < 4 * (19.6 / 2000) ** 0.5
    assert abs(sizes.var().item() / 19.6 - 1) < 4 * (2 / 1999) ** 0.5


def test_loader_rate_and_empty_batch_shapes():
    data = TensorDataset(torch.randn(30, 3, 2), torch.randint(0, 5, (30,)))
    loader = PoissonDataLoader(DataLoader(data, batch_size=1),
                               generator=torch.Generator().manual_seed(1))
    assert loader.sample_rate == pytest.approx(1 / 30) and len(loader) == 30
    batches = list(loader)
    empty = next(b for b in batches if len(b[0]) == 0)
    assert empty[0].shape == (0, 3, 2) and empty[1].shape == (0,)
    assert empty[1].dtype == torch.int64


def test_empty_dataset_is_a_clear_error():
    with pytest.raises(ConfigError, match="non-empty dataset"):
        PoissonDataLoader(DataLoader(TensorDataset(torch.zeros(0, 3)), batch_size=4),
                          generator=None)


def test_a_weighted_sampler_replaced_by_poisson_sampling_is_said():
    data = TensorDataset(torch.randn(10, 2), torch.randint(0, 2, (10,)))
    weighted = WeightedRandomSampler(torch.linspace(0.1, 1.0, 10), num_samples=10)
    with pytest.warns(UserWarning, match="replaces the data loader's WeightedRandomSampler"):
        PoissonDataLoader(DataLoader(data, batch_size=2, sampler=weighted), generator=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shuffling alone is what Poisson sampling replaces
        PoissonDataLoader(DataLoader(data, batch_size=2, shuffle=True), generator=None)


class _Records(torch.utils.data.Dataset):
    """Samples as dicts (``as_dict``) or bare tensors."""

    def __init__(self, as_dict: bool) -> None:
        self.x, self.as_dict = torch.randn(30, 5), as_dict

    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int):
        return {"x": self.x[i], "label": i % 2} if self.as_dict else self.x[i]


@pytest.mark.parametrize("as_dict", [True, False], ids=["dict", "bare_tensor"])
def test_empty_batches_keep_the_structure_of_dict_and_bare_tensor_samples(as_dict):
    """Built from dataset[0]'s fields, an empty batch of dict samples crashed and one of bare
    tensors became a list of 5 empty tensors."""
    loader = PoissonDataLoader(DataLoader(_Records(as_dict), batch_size=1),
                               generator=torch.Generator().manual_seed(1))
    batches = list(loader)
    full = next(b for b in batches if len(b["x"] if as_dict else b))
    empty = next(b for b in batches if not len(b["x"] if as_dict else b))
    if as_dict:
        assert set(empty) == {"x", "label"} and empty["x"].shape == (0, 5)
        assert empty["label"].dtype == full["label"].dtype
    else:
        assert isinstance(empty, torch.Tensor) and empty.shape == (0, 5)


@dataclasses.dataclass
class _Batch:
    x: torch.Tensor
    lengths: list


class _Opaque:
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x


@pytest.mark.parametrize("collate", ["dataclass", "zip", "lengths list"])
def test_empty_batches_of_custom_collates_hold_no_sample(collate):
    """An empty Poisson batch of a dataclass, or a list of lengths, kept the first sample's
    values (a real row in an empty batch); a detection-style zip collate crashed make_private
    on its 0-d labels."""
    data = TensorDataset(torch.randn(40, 5), torch.arange(40))
    collates = {"dataclass": lambda s: _Batch(torch.stack([x for x, _ in s]), [5] * len(s)),
                "zip": lambda s: tuple(zip(*s)),
                "lengths list": lambda s: (torch.stack([x for x, _ in s]), [5] * len(s))}
    loader = PoissonDataLoader(DataLoader(data, batch_size=2, collate_fn=collates[collate]),
                               generator=torch.Generator().manual_seed(1))
    empty = next(b for b in loader if not len(b.lengths if collate == "dataclass" else b[1]))
    if collate == "dataclass":
        assert empty.x.shape == (0, 5) and empty.lengths == []
    elif collate == "zip":
        assert empty == ((), ()) or all(len(field) == 0 for field in empty)
    else:
        assert empty[0].shape == (0, 5) and empty[1] == []


def test_a_collated_type_that_cannot_be_emptied_is_refused_naming_it():
    data = TensorDataset(torch.randn(8, 5))
    with pytest.raises(ConfigError, match="returns a _Opaque inside its batches"):
        PoissonDataLoader(DataLoader(data, batch_size=2,
                                     collate_fn=lambda s: _Opaque(torch.stack([x for x, in s]))),
                          generator=None)


def test_a_subset_sampler_keeps_its_split():
    """A train split given as SubsetRandomSampler: Poisson batches used to come from the whole
    dataset (validation rows trained on) at an expected size over all of it."""
    from torch.utils.data import SubsetRandomSampler
    data = TensorDataset(torch.arange(100))
    train = list(range(0, 100, 4))  # 25 samples
    loader = PoissonDataLoader(DataLoader(data, batch_size=5, sampler=SubsetRandomSampler(train)),
                               generator=torch.Generator().manual_seed(0))
    assert len(loader) == 5 and loader.sample_rate == pytest.approx(1 / 5)
    seen = [int(i) for _ in range(40) for (batch,) in loader for i in batch]
    assert set(seen) <= set(train) and len(seen) == pytest.approx(40 * 25, rel=0.1)
