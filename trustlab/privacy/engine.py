"""DP-SGD with book-keeping: one backward pass, per-sample norms from the kernels, clipped sums.

``make_private`` taps every supported layer so that autograd computes only input gradients and
hands each layer's activations and output gradients to a :class:`GradSampleTracker`. At the end
of each backward pass the tracker computes per-sample norms over all layers, clip factors
``c_i = min(1, C / (||g_i|| + 1e-6))`` and each layer's clipped sum, and accumulates them (so
several backward passes before one step form one logical batch). :class:`DPOptimizer` adds
N(0, σ²C²) once per step, divides by the *expected* batch size and steps the wrapped optimizer.
"""

from __future__ import annotations

import math
import secrets
import weakref
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils.data import DataLoader

from opacus.data_loader import DPDataLoader

from trustlab.errors import ConfigError, TrustlabError
from trustlab.kernels import (LayerKernel, Record, clip_factors, data_key, kernel_for,
                              noisy_write, row_sq_norms, scale_accumulate, shared_results)
from trustlab.privacy.accounting import PrivacyFacts, calibrate_noise, make_accountant
from trustlab.privacy.validators import validate

_TRACKERS: "weakref.WeakKeyDictionary[nn.Module, GradSampleTracker]" = weakref.WeakKeyDictionary()
_TAPPED_CLASSES: dict[type, type] = {}


def _tapped_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of ``cls`` whose forward goes through the kernel's capture while tracked.

    Swapping the class (not the instance's forward) keeps copies safe: a deep copy of a tapped
    layer is not tracked and runs the plain forward on its own weights. ``dp_sink()`` gives
    the sink to layers that compute the tapped layer's product themselves."""
    if cls not in _TAPPED_CLASSES:
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
            tracker = _TRACKERS.get(self)
            if tracker is None or not torch.is_grad_enabled():
                return cls.forward(self, *args, **kwargs)
            return tracker.capture(self, *args, **kwargs)

        def dp_sink(self: nn.Module) -> Callable[[Record], None] | None:
            """Where this layer's records go while tracked and recording gradients (for a
            layer that computes its own product elsewhere, like the DP recurrence), else None."""
            tracker = _TRACKERS.get(self)
            if tracker is None or not torch.is_grad_enabled():
                return None
            return tracker.sinks[self]

        _TAPPED_CLASSES[cls] = type(cls.__name__, (cls,), {"forward": forward, "dp_sink": dp_sink,
                                                           "__module__": cls.__module__})
    return _TAPPED_CLASSES[cls]


class GradSampleTracker:
    """Collects each tapped layer's records and turns them into accumulated clipped sums."""

    def __init__(self, module: nn.Module, max_grad_norm: float, loss_reduction: str) -> None:
        if loss_reduction not in ("mean", "sum"):
            raise ConfigError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        self.max_grad_norm = max_grad_norm
        self.loss_reduction = loss_reduction
        self.layers: dict[nn.Module, str] = {}
        self.kernels: dict[nn.Module, LayerKernel] = {}
        self.params: dict[nn.Module, list[Tensor]] = {}
        owners: dict[int, set[nn.Module]] = {}
        for name, layer in module.named_modules():
            kernel = kernel_for(layer)
            params = [p for p in layer.parameters(recurse=False) if p.requires_grad]
            if kernel is None or not params or layer in self.layers:
                continue
            self.layers[layer] = name or type(layer).__name__
            self.kernels[layer] = kernel
            self.params[layer] = params
            for p in params:
                owners.setdefault(id(p), set()).add(layer)
        self.shared = {layer for layers in owners.values() if len(layers) > 1 for layer in layers}
        self.sinks = {layer: self._make_sink(layer) for layer in self.layers}
        self.records: dict[nn.Module, list[Record]] = {}
        self.summed: dict[Tensor, Tensor] = {}
        self.samples = 0
        self.last_sq_norms: Tensor | None = None
        self._callback_queued = False
        self._recorded_nodes: weakref.WeakSet = weakref.WeakSet()  # backward nodes since step

    def attach(self) -> None:
        for layer in self.layers:
            _TRACKERS[layer] = self
            layer.__class__ = _tapped_class(type(layer))

    def detach(self) -> None:
        for layer in self.layers:
            _TRACKERS.pop(layer, None)
            layer.__class__ = layer.__class__.__mro__[1]

    def capture(self, layer: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
        return self.kernels[layer].capture(layer, self.sinks[layer], *args, **kwargs)

    def _make_sink(self, layer: nn.Module) -> Callable[[Record], None]:
        params = self.params[layer]

        def sink(record: Record) -> None:
            if not _computes_gradient_of(params):  # an input-gradient pass (an attack, a
                return  # saliency map): recording it would count its samples twice
            node = torch._C._current_autograd_node()
            if node in self._recorded_nodes:
                self.records.clear()  # this pass's records: the error aborts the pass
                self._callback_queued = False
                raise TrustlabError(
                    f"layer {self.layers[layer]!r} was backpropagated twice through one forward "
                    "pass (backward with retain_graph=True) before optimizer.step(): its samples "
                    "would be clipped and counted twice. Add the losses and call backward once")
            if node is not None:
                self._recorded_nodes.add(node)
            self.records.setdefault(layer, []).append(record)
            if not self._callback_queued:  # clip once the whole backward pass is done
                self._callback_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self.flush)
        return sink

    @torch.no_grad()  # also after backward(create_graph=True): the sums carry no graph
    def flush(self) -> None:
        """Clip the pending records' samples and add their clipped sums to ``summed``."""
        self._callback_queued = False
        pending, self.records = self.records, {}
        if not pending:
            return
        sizes = {r.batch_size for recs in pending.values() for r in recs}
        if len(sizes) != 1:
            raise TrustlabError(f"layers saw different batch sizes {sorted(sizes)} in one "
                                "backward pass; per-sample clipping needs the batch in dim 0 "
                                "of every layer input (set batch_first=True)")
        batch = sizes.pop()
        if batch == 0:  # an empty Poisson batch contributes nothing; step() still adds noise
            return
        scale = float(batch) if self.loss_reduction == "mean" else 1.0
        with shared_results(_shared_data(pending)):
            layer_norms, states, shared = self._sq_norms(pending)
        first, *rest = layer_norms.values()
        norms = sum(rest, first) * scale ** 2
        self._check_finite(norms, layer_norms)
        self.last_sq_norms = norms
        weights = clip_factors(norms, self.max_grad_norm, scale)
        # smallest layers first, each layer's records dropped once its sum is formed: the
        # largest layer's temporaries then coexist with little else (the peak of the flush)
        for layer in sorted(states, key=lambda layer: _record_bytes(pending[layer])):
            records, state = pending.pop(layer), states.pop(layer)
            for name, grad in self.kernels[layer].clipped_sum(layer, records, state,
                                                            weights).items():
                self._add(getattr(layer, name), grad)
            del records, state
        for p, grads in shared.items():
            self._add(p, scale_accumulate(grads.flatten(1), weights).view_as(p))
        self.samples += batch

    def _sq_norms(self, pending: dict[nn.Module, list[Record]]
                  ) -> tuple[dict[nn.Module | None, Tensor], dict[nn.Module, Any],
                             dict[Tensor, Tensor]]:
        """Per-layer squared norms (shared parameters under the key None), each layer's state
        for its clipped sum, and the materialised per-sample gradients of shared parameters."""
        layer_norms: dict[nn.Module | None, Tensor] = {}
        states: dict[nn.Module, Any] = {}
        shared: dict[Tensor, Tensor] = {}
        for layer, records in pending.items():
            kernel = self.kernels[layer]
            if layer in self.shared:
                for name, grads in kernel.per_sample_grads(layer, records).items():
                    p = getattr(layer, name)
                    shared[p] = grads + shared[p] if p in shared else grads
            else:
                layer_norms[layer], states[layer] = kernel.sq_norms(layer, records)
        for grads in shared.values():
            layer_norms[None] = layer_norms.get(None, 0.0) + row_sq_norms(grads)
        return layer_norms, states, shared

    def _check_finite(self, norms: Tensor, layer_norms: dict[nn.Module | None, Tensor]) -> None:
        """One check on the sum of the norms (NaN/inf propagate); per sample, naming the
        layer, only when it fails."""
        if math.isfinite(norms.sum().item()) or bool(torch.isfinite(norms).all()):
            return
        where = next((f"layer {self.layers[layer]!r}" if layer is not None else "a shared "
                      "parameter" for layer, n in layer_norms.items()
                      if not bool(torch.isfinite(n).all())), "the model")
        bad = (~torch.isfinite(norms)).nonzero().flatten()[:5].tolist()
        raise TrustlabError(
            f"non-finite per-sample gradient in {where} for samples {bad}: the loss or an "
            "activation is NaN/inf. No update was applied; lower the learning rate, check "
            "the inputs, or clamp the loss")

    def _add(self, p: Tensor, grad: Tensor) -> None:
        if grad.dtype != p.dtype:
            grad = grad.to(p.dtype)
        before = self.summed.get(p)
        self.summed[p] = grad if before is None else before + grad

    def reset(self) -> None:
        self.records.clear()
        self.summed.clear()
        self.samples = 0
        self._recorded_nodes.clear()


def _computes_gradient_of(params: list[Tensor]) -> bool:
    """Whether the running backward pass computes a gradient for any of ``params``: True for
    ``loss.backward()``, False for ``torch.autograd.grad(loss, x)`` or ``backward(inputs=[x])``
    (gradients of inputs only, as attacks and explanations take them)."""
    for p in params:
        try:
            if torch._C._will_engine_execute_node(get_gradient_edge(p).node):
                return True
        except RuntimeError:  # torch.autograd.grad(loss, p): asks for p's gradient itself
            return True
    return False


def _shared_data(pending: dict[nn.Module, list[Record]]) -> set[tuple]:
    """Keys of the sequence tensors (more than 2 dims: the only ones whose grams and time sums
    are worth sharing) that the records of more than one layer hold."""
    seen: dict[tuple, nn.Module] = {}
    shared = set()
    for layer, records in pending.items():
        for key in {data_key(t) for r in records for t in (r.a, r.g) if t.dim() > 2}:
            if seen.setdefault(key, layer) is not layer:
                shared.add(key)
    return shared


def _record_bytes(records: list[Record]) -> int:
    return sum(r.a.nbytes + r.g.nbytes for r in records)


class DPOptimizer(torch.optim.Optimizer):
    """Wraps an optimizer: ``step`` writes noisy averaged clipped gradients, then steps it."""

    def __init__(self, optimizer: torch.optim.Optimizer, tracker: GradSampleTracker, *,
                 noise_multiplier: float, expected_batch_size: float, sample_rate: float,
                 accountant: str = "rdp", noise_seed: int | None = None,
                 reduce: Callable[[list[Tensor]], list[Tensor]] | None = None) -> None:
        self.original_optimizer = optimizer
        self.tracker = tracker
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.sample_rate = float(sample_rate)
        self.accountant_name = accountant
        self.accountant = make_accountant(accountant)
        self.generator = torch.Generator(device=self._device())
        self.generator.manual_seed(secrets.randbits(63) if noise_seed is None else noise_seed)
        self.reduce = reduce
        self.steps = 0
        self.samples_seen = 0  # over all steps (this rank's samples when distributed)
        self._skip_next_step = False
        self._accumulating = False  # the last step() was skipped: keep the clipped sums

    def _device(self) -> torch.device:
        return next(p.device for g in self.original_optimizer.param_groups for p in g["params"])

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return self.original_optimizer.param_groups

    @property
    def state(self) -> dict:  # type: ignore[override]
        return self.original_optimizer.state

    @property
    def defaults(self) -> dict:  # type: ignore[override]
        return self.original_optimizer.defaults

    @property
    def max_grad_norm(self) -> float:
        return self.tracker.max_grad_norm

    def params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget gradients and clipped sums accumulated since the last step (the sums are
        kept while a logical batch is still running, see :meth:`signal_skip_step`)."""
        self.original_optimizer.zero_grad(set_to_none)
        if not self._accumulating:
            self.tracker.reset()

    def signal_skip_step(self, do_skip: bool = True) -> None:
        """Make the next ``step()`` only accumulate: its physical batch does not end the
        logical one (what :class:`~trustlab.privacy.BatchMemoryManager` signals)."""
        self._skip_next_step = do_skip

    def discard_accumulated(self) -> None:
        """Forget the clipped sums of a logical batch that will not be stepped (a loop over
        physical batches left early)."""
        self._skip_next_step = self._accumulating = False
        self.tracker.reset()

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One DP step over everything accumulated since the last step (an empty batch
        included: it still adds noise and is still accounted), or, after
        ``signal_skip_step()``, nothing but keeping the clipped sums for the next one."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.tracker.flush()
        self._accumulating, self._skip_next_step = self._skip_next_step, False
        if self._accumulating:
            return loss
        self._check_sample_count(self.samples_seen + self.tracker.samples)
        self.samples_seen += self.tracker.samples
        params = self.params()
        sums = [self.tracker.summed[p] if p in self.tracker.summed else torch.zeros_like(p)
                for p in params]
        if self.reduce is not None:
            sums = self.reduce(sums)
        std = self.noise_multiplier * self.max_grad_norm
        for p, grad in zip(params, noisy_write(sums, std, self.expected_batch_size,
                                               self.generator)):
            p.grad = grad
        self.tracker.reset()
        self.original_optimizer.step()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1
        return loss

    def _check_sample_count(self, seen: int) -> None:
        """Refuse a step when the samples so far exceed what one loader batch per step gives
        by more than chance allows (10 s.d. of the Poisson total, plus 10): steps spanning
        several loader batches make the sampling rate, and so ε, wrong."""
        expected = self.expected_batch_size * (self.steps + 1)
        if seen <= expected + 10 * math.sqrt(expected) + 10:
            return
        raise TrustlabError(
            f"{seen} samples in {self.steps + 1} steps, where one batch per step of the data "
            f"loader given to make_private (sampling rate {self.sample_rate:.4g}) gives about "
            f"{expected:.0f}: a step spans several loader batches, so the accountant's ε would "
            "be too low. No update was applied. For logical batches larger than memory give "
            "make_private the logical batch size and use trustlab.privacy.BatchMemoryManager")

    def epsilon(self, delta: float) -> float:
        return float(self.accountant.get_epsilon(delta=delta)) if self.steps else 0.0

    def privacy_facts(self, delta: float) -> PrivacyFacts:
        return PrivacyFacts(self.noise_multiplier, self.sample_rate, self.steps,
                            self.max_grad_norm, self.epsilon(delta), delta, self.accountant_name)

    def state_dict(self) -> dict:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.original_optimizer.load_state_dict(state_dict)

    def detach(self) -> None:
        """Remove the taps: the module's layers run their plain forward again."""
        self.tracker.detach()


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
