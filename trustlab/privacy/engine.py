"""``make_private``: DP-SGD with book-keeping, in Opacus's shape.

One backward pass gives every tapped layer's activations and output gradients
(:mod:`trustlab.privacy.tracker`); the per-sample norms and clipped sums come from the kernels;
:class:`~trustlab.privacy.optimizer.DPOptimizer` adds N(0, σ²C²) once per step, divides by the
*expected* batch size and steps the wrapped optimizer.
"""

from __future__ import annotations

import secrets
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from trustlab.errors import ConfigError
from trustlab.privacy.accounting import calibrate_noise
from trustlab.privacy.adaptive import AdaptiveClipping
from trustlab.privacy.distributed import (all_reduce_sums, require_group, shared_generator,
                                          shared_key, shared_seed)
from trustlab.privacy.optimizer import DPOptimizer
from trustlab.privacy.sampling import PoissonDataLoader, Sampling, population_size
from trustlab.privacy.secure import KEY_BYTES, SecureRandom
from trustlab.privacy.tracker import CLIPPING_STYLES, GradSampleTracker
from trustlab.privacy.validators import validate


def make_private(module: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader,
                 *, target_delta: float, max_grad_norm: float | Sequence[float],
                 noise_multiplier: float | None = None, target_epsilon: float | None = None,
                 epochs: int | None = None, accountant: str = "rdp",
                 poisson_sampling: bool = True, loss_reduction: str = "mean",
                 noise_seed: int | None = None, distributed: bool = False,
                 secure_mode: bool = False, clipping: str = "flat",
                 target_unclipped_quantile: float = 0.5, clipbound_learning_rate: float = 0.2,
                 unclipped_num_std: float | None = None,
                 ) -> tuple[nn.Module, DPOptimizer, DataLoader]:
    """Make ``(module, optimizer, data_loader)`` differentially private, Opacus-style.

    Give either ``noise_multiplier`` or ``target_epsilon`` (with ``epochs``). Layers the kernels
    cannot handle raise an error naming them and the fix (see :func:`~.validators.fix`).
    The sampling rate is ``q = 1 / len(data_loader)``; the returned loader samples Poisson
    batches at that rate (empty and variable ones included); the average divides by the
    expected batch size ``q·N``.
    ``distributed=True`` (after ``init_process_group``; the same ``data_loader`` over the whole
    dataset on every rank): each rank trains on its share of the one Poisson batch, the clipped
    sums are all-reduced and the (shared-seed) noise is added once. Without Poisson sampling the
    loader must shard with a ``DistributedSampler``. ``secure_mode=True`` draws the noise and
    the Poisson masks from a CSPRNG (:mod:`~trustlab.privacy.secure`; slower, not seedable).
    ``clipping="adaptive"`` starts the bound at ``max_grad_norm`` and moves it towards the
    ``target_unclipped_quantile`` of the per-sample norms (:mod:`~trustlab.privacy.adaptive`;
    the count's noise ``unclipped_num_std`` defaults to the expected batch size / 20).
    ``clipping="per_layer"`` clips each layer by its own norm to its own bound: one number
    ``C`` gives each of the G layers ``C / sqrt(G)``, a list gives each its own (the noise is
    scaled to the norm of the bounds). ``clipping="automatic"`` scales every sample by
    ``C / (||g_i|| + 0.01)`` (Bu et al. 2022): no bound to tune, the learning rate takes its
    place.
    """
    validate(module)
    _check_optimizer(module, optimizer)
    _check_options(data_loader, noise_multiplier=noise_multiplier, target_epsilon=target_epsilon,
                   epochs=epochs, poisson_sampling=poisson_sampling, distributed=distributed,
                   secure_mode=secure_mode, noise_seed=noise_seed, clipping=clipping)
    n = population_size(data_loader)
    sample_rate = 1 / len(data_loader)  # a sample's chance to be in a step's batch
    rank, world = require_group() if distributed else (0, 1)
    noise_seed, noise_random, sampling_source = _random_sources(
        data_loader, distributed, secure_mode, noise_seed, poisson_sampling)
    if poisson_sampling:  # the same batches on any number of ranks
        data_loader = PoissonDataLoader(data_loader, generator=sampling_source, rank=rank,
                                        world_size=world)
    if target_epsilon is not None:
        noise_multiplier = calibrate_noise(target_epsilon, target_delta, sample_rate,
                                           int(epochs / sample_rate), accountant)  # type: ignore
    adaptive = None
    if clipping == "adaptive":
        adaptive = AdaptiveClipping(target_unclipped_quantile, clipbound_learning_rate,
                                    unclipped_num_std or sample_rate * n / 20)
    tracker = GradSampleTracker(module, max_grad_norm, loss_reduction,
                                clipping="flat" if adaptive is not None else clipping,
                                count_unclipped=adaptive is not None)
    dp_optimizer = DPOptimizer(optimizer, tracker, noise_multiplier=noise_multiplier,
                               expected_batch_size=sample_rate * n, sample_rate=sample_rate,
                               accountant=accountant, noise_seed=noise_seed,
                               reduce=all_reduce_sums if distributed else None,
                               secure_random=noise_random, adaptive=adaptive,
                               received=data_loader.received if poisson_sampling else None,
                               sampling=sampling_source)
    tracker.attach()  # last: every check above has passed
    return module, dp_optimizer, data_loader


def _check_options(data_loader: DataLoader, *, noise_multiplier: float | None,
                   target_epsilon: float | None, epochs: int | None, poisson_sampling: bool,
                   distributed: bool, secure_mode: bool, noise_seed: int | None,
                   clipping: str) -> None:
    """Refuse what cannot work, before anything is changed."""
    if clipping not in CLIPPING_STYLES + ("adaptive",):
        raise ConfigError(f"clipping must be one of {', '.join(CLIPPING_STYLES)}, adaptive; "
                          f"got {clipping!r}")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ConfigError("give exactly one of noise_multiplier or target_epsilon")
    if target_epsilon is not None and epochs is None:
        raise ConfigError("target_epsilon needs epochs (how long the budget must last)")
    if distributed and not poisson_sampling and not isinstance(data_loader.sampler,
                                                               DistributedSampler):
        raise ConfigError(
            "distributed=True with poisson_sampling=False needs a data loader whose sampler is "
            "a torch.utils.data.DistributedSampler: otherwise every rank loads the same batches "
            "and each sample is counted once per rank (or use Poisson sampling, the default)")
    if secure_mode and noise_seed is not None:
        raise ConfigError("noise_seed makes the noise reproducible, which secure_mode exists "
                          "to prevent: give one or the other")
    if isinstance(data_loader.dataset, IterableDataset):
        raise ConfigError("DP-SGD needs a map-style dataset (indexable, with a length): the "
                          "sampling rate, and so ε, is 1/len(data_loader) over a known number "
                          "of samples, which an IterableDataset does not give")
    if data_loader.batch_size is None and data_loader.batch_sampler is None:
        raise ConfigError("the data loader has batch_size=None (a dataset of ready-made "
                          "batches): the sampling rate and the expected batch size would be "
                          "those of single samples. Give make_private a loader of samples with "
                          "a batch_size")
    if len(data_loader) == 0:
        raise ConfigError("the data loader yields no batches: its dataset is empty")


def _check_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer that trains parameters outside ``module``: no layer records their
    per-sample gradients, so each step would set them to noise alone."""
    inside = {id(p) for p in module.parameters()}
    outside = [f"param_groups[{g}][{i}] (shape {tuple(p.shape)})"
               for g, group in enumerate(optimizer.param_groups)
               for i, p in enumerate(group["params"]) if p.requires_grad and id(p) not in inside]
    if outside:
        raise ConfigError(
            f"the optimizer trains parameters that are not in the model: {', '.join(outside)}. "
            "DP training computes per-sample gradients only for the model's layers, so step() "
            "would update these with noise alone. Make them part of a layer of the model (a "
            "learnable loss temperature: an nn.Module inside the model), or leave them out of "
            "the optimizer; an optimizer built before fix(model) holds the replaced layers' "
            "parameters: build it after")


def _random_sources(data_loader: DataLoader, distributed: bool, secure_mode: bool,
                    noise_seed: int | None, poisson_sampling: bool
                    ) -> tuple[int | None, SecureRandom | None, Sampling]:
    """(the noise seed, secure mode's noise stream, the Poisson masks' source: None without
    Poisson sampling); distributed, rank 0's on every rank."""
    if secure_mode:  # two stream keys
        key = shared_key(2 * KEY_BYTES) if distributed else secrets.token_bytes(2 * KEY_BYTES)
        masks = SecureRandom(key[KEY_BYTES:]) if poisson_sampling else None
        return None, SecureRandom(key[:KEY_BYTES]), masks
    if distributed:
        noise_seed = shared_seed(noise_seed)
    if not poisson_sampling:
        return noise_seed, None, None
    masks = _sampling_generator(data_loader, noise_seed)
    return noise_seed, None, shared_generator(masks) if distributed else masks


def _sampling_generator(data_loader: DataLoader, noise_seed: int | None) -> torch.Generator:
    """The Poisson masks' own generator: the loader's, when it has one; else one seeded from
    ``noise_seed`` (a stream apart from the noise's) or at random. Never torch's default one:
    a resumed run seeded like the first (``torch.manual_seed(0)`` in both) drew the same
    batches again, accounted as fresh ones; the optimizer's ``state_dict`` saves this one."""
    if data_loader.generator is not None:
        return data_loader.generator
    seed = secrets.randbits(63) if noise_seed is None else (noise_seed + _SAMPLING_SEED_OFFSET)
    return torch.Generator().manual_seed(seed % 2**63)


_SAMPLING_SEED_OFFSET = 0x9E3779B97F4A7C15  # the masks' stream apart from the noise's
