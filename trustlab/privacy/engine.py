"""``make_private``: DP-SGD with book-keeping, in Opacus's shape.

One backward pass gives every tapped layer's activations and output gradients
(:mod:`trustlab.privacy.tracker`); the per-sample norms and clipped sums come from the kernels;
:class:`~trustlab.privacy.optimizer.DPOptimizer` adds N(0, σ²C²) once per step, divides by the
*expected* batch size and steps the wrapped optimizer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from opacus.data_loader import DPDataLoader

from trustlab.errors import ConfigError
from trustlab.privacy.accounting import calibrate_noise
from trustlab.privacy.optimizer import DPOptimizer
from trustlab.privacy.tracker import GradSampleTracker
from trustlab.privacy.validators import validate


def make_private(module: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader,
                 *, target_delta: float, max_grad_norm: float,
                 noise_multiplier: float | None = None, target_epsilon: float | None = None,
                 epochs: int | None = None, accountant: str = "rdp",
                 poisson_sampling: bool = True, loss_reduction: str = "mean",
                 noise_seed: int | None = None, distributed: bool = False,
                 ) -> tuple[nn.Module, DPOptimizer, DataLoader]:
    """Make ``(module, optimizer, data_loader)`` differentially private, Opacus-style.

    Give either ``noise_multiplier`` or ``target_epsilon`` (with ``epochs``). Layers the kernels
    cannot handle raise an error naming them and the fix (see :func:`~.validators.fix`).
    The returned loader samples Poisson batches (empty and variable ones included); the average
    divides by the expected batch size ``q·N``. ``distributed=True`` all-reduces the clipped sums
    over the default process group before the (shared-seed) noise is added once.
    """
    validate(module)
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ConfigError("give exactly one of noise_multiplier or target_epsilon")
    n = len(data_loader.dataset)  # type: ignore[arg-type]
    batch_size = data_loader.batch_size or 1
    if distributed:
        from trustlab.privacy.distributed import all_reduce_sums, shared_seed
        noise_seed = shared_seed(noise_seed)
        world = torch.distributed.get_world_size()
    else:
        world = 1
    sample_rate = batch_size * world / n
    if poisson_sampling:
        data_loader = DPDataLoader.from_data_loader(data_loader, distributed=distributed)
        sample_rate = data_loader.sample_rate * (world if distributed else 1)
    if target_epsilon is not None:
        if epochs is None:
            raise ConfigError("target_epsilon needs epochs (how long the budget must last)")
        noise_multiplier = calibrate_noise(target_epsilon, target_delta, sample_rate,
                                           int(epochs / sample_rate), accountant)
    tracker = GradSampleTracker(module, max_grad_norm, loss_reduction)
    tracker.attach()
    dp_optimizer = DPOptimizer(optimizer, tracker, noise_multiplier=noise_multiplier,
                               expected_batch_size=sample_rate * n, sample_rate=sample_rate,
                               accountant=accountant, noise_seed=noise_seed,
                               reduce=all_reduce_sums if distributed else None)
    return module, dp_optimizer, data_loader
