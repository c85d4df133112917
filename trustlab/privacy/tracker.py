"""Book-keeping taps: every supported layer records its activations and output gradients.

:class:`GradSampleTracker` swaps each supported layer's class for a tapped subclass whose
forward goes through the layer kernel's autograd function: autograd then computes only input
gradients and hands each layer's activations and output gradients (a :class:`Record`) to the
tracker (Bu et al. 2023). At the end of each backward pass that trains the layers the tracker
computes per-sample norms over all layers, clip factors ``c_i = min(1, C / (||g_i|| + 1e-6))``
and each layer's clipped sum, and accumulates them (several backward passes before one step
form one logical batch). Clipping styles: ``"flat"`` (above), ``"per_layer"`` (each layer
clipped to its own bound by its own norm; layers sharing parameters form one group) and
``"automatic"`` (every sample scaled by ``C / (||g_i|| + 0.01)``, Bu et al. 2022). Under
per-layer clipping a layer's factors need only its own norms, so a layer is clipped as soon as
its records of the running backward pass are all in, and its activations and output gradients
are freed then instead of being held to the end of the pass.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import weakref
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from trustlab.errors import ConfigError, TrustlabError
from trustlab.kernels import (AUTO_S_GAMMA, CLIP_EPS, LayerKernel, Record, add_row_sq_norms,
                              automatic_factors, clip_factors, data_key, kernel_for,
                              native_rows_available, native_rows_clip, native_rows_sums,
                              own_class, row_sq_norms, scale_accumulate, shared_results)

_TRACKERS: "weakref.WeakKeyDictionary[nn.Module, GradSampleTracker]" = weakref.WeakKeyDictionary()
_TAPPED_CLASSES: dict[type, type] = {}
# the modules given to make_private: their forward notes the input batch for their tracker
_ROOTS: "weakref.WeakKeyDictionary[nn.Module, GradSampleTracker]" = weakref.WeakKeyDictionary()
CLIPPING_STYLES = ("flat", "per_layer", "automatic")


def _tapped_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of ``cls`` whose forward goes through the kernel's capture while tracked.

    Swapping the class (not the instance's forward) keeps copies safe: a copy (deepcopy,
    torch.save) of a tapped layer is one of the class it stands for, untracked, on its own
    weights. ``dp_sink()`` gives the sink to layers that compute the tapped layer's product
    themselves, ``untapped_class`` the class it stands for (whose forward a kernel may call
    itself)."""
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
            return tracker.own_product_sink(self)

        def __reduce_ex__(self: nn.Module, protocol: Any) -> Any:
            """Pickle (torch.save, deepcopy) as the class it stands for: a tapped class exists
            only in the process that made it, and a copy is not tracked anyway."""
            _, _, *rest = object.__reduce_ex__(self, protocol)
            return (object.__new__, (cls,), *rest)

        _TAPPED_CLASSES[cls] = type(cls.__name__, (cls,), {"forward": forward, "dp_sink": dp_sink,
                                                           "__reduce_ex__": __reduce_ex__,
                                                           "untapped_class": cls,
                                                           "__module__": cls.__module__})
    return _TAPPED_CLASSES[cls]


class GradSampleTracker:
    """Collects each tapped layer's records and turns them into accumulated clipped sums."""

    def __init__(self, module: nn.Module, max_grad_norm: float | Sequence[float],
                 loss_reduction: str, clipping: str = "flat",
                 count_unclipped: bool = False) -> None:
        if loss_reduction not in ("mean", "sum"):
            raise ConfigError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if clipping not in CLIPPING_STYLES:
            raise ConfigError(f"clipping must be one of {', '.join(CLIPPING_STYLES)}, got "
                              f"{clipping!r}")
        self.clipping = clipping
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
        # every parameter a tapped layer's kernel covers, frozen ones too (unfrozen later,
        # its records give them gradients)
        self.tracked = {p for layer, kernel in self.kernels.items()
                        for n, p in layer.named_parameters(recurse=False) if kernel.covers(n)}
        already = [name for layer, name in self.layers.items() if layer in _TRACKERS]
        if already:
            raise ConfigError(
                f"layers {already} are already private (make_private was called on this model "
                "before): call the earlier optimizer's detach() first, or make a fresh model")
        self.shared = {layer for layers in owners.values() if len(layers) > 1 for layer in layers}
        # clipping groups in the model's order: every layer on its own, and the layers that
        # share parameters together (where the first of them is)
        tied = "tied " + " + ".join(n for layer, n in self.layers.items() if layer in self.shared)
        groups: dict[nn.Module | None, str] = {}
        for layer, name in self.layers.items():
            if layer not in self.shared:
                groups[layer] = name
            elif None not in groups:
                groups[None] = tied
        # per-layer: each group's bound; the sensitivity (what the noise is scaled to) is the
        # norm of the bounds
        self.layer_bounds = (_per_layer_bounds(groups, max_grad_norm)
                             if clipping == "per_layer" else None)
        self.max_grad_norm = (math.sqrt(sum(b * b for b in self.layer_bounds.values()))
                              if self.layer_bounds else _positive_bound(max_grad_norm))
        self.sinks = {layer: self._make_sink(layer) for layer in self.layers}
        self.records: dict[nn.Module, list[Record]] = {}
        self.summed: dict[Tensor, Tensor] = {}
        self.samples = 0
        self.count_unclipped = count_unclipped  # adaptive clipping needs the count
        self.unclipped: Tensor | int = 0  # samples within the bound since the last reset
        self.last_sq_norms: Tensor | None = None
        self._callback_queued = False
        self._recorded_nodes: weakref.WeakSet = weakref.WeakSet()  # backward nodes since step
        # per-layer clipping as records arrive: each layer's capture nodes not yet recorded,
        # the layers whose records also come from elsewhere (never clipped early), and what
        # the running backward pass has clipped early
        self._awaited: dict[nn.Module, weakref.WeakSet] = {}
        self._never_early: set[nn.Module] = set(self.shared)
        self._early = _EarlyClipped()
        # flat or automatic clipping: the running pass's one-row Linear records' per-sample
        # norms, added as they arrive (the flush's native path uses them), and their layers
        self._pass_norms: Tensor | None = None
        self._normed: set[nn.Module] = set()
        self._hooks: list = []  # on the parameters (and the module's forward) while attached
        self.module = module
        # the batch sizes of the module's inputs since the last flush: every record's first dim
        # must be one of them (a row that is not a sample would be clipped as one)
        self._input_batches: set[int] = set()
        # each layer's parameters' gradient-accumulator nodes while attached (held: autograd
        # then reuses them, and looking them up is not paid per backward pass)
        self._grad_nodes: dict[nn.Module, list] = {}

    def set_max_grad_norm(self, bound: float) -> None:
        """A new bound C; per-layer clipping scales every group's bound by the same factor (their
        norm, the sensitivity, becomes C)."""
        bound = _positive_bound(bound)
        if self.layer_bounds is not None:
            factor = bound / self.max_grad_norm
            self.layer_bounds = {g: b * factor for g, b in self.layer_bounds.items()}
        self.max_grad_norm = bound

    def attach(self) -> None:
        for layer in self.layers:
            _TRACKERS[layer] = self
            layer.__class__ = _tapped_class(type(layer))
        # the taps give their parameters no gradient: one that gets one was used outside them
        self._hooks = [p.register_hook(self._untapped_use(f"{name}.{n}"))
                       for layer, name in self.layers.items()
                       for n, p in layer.named_parameters(recurse=False) if p.requires_grad]
        _ROOTS[self.module] = self
        self._hooks.append(self.module.register_forward_pre_hook(_note_input_batch,
                                                                 with_kwargs=True))
        self._grad_nodes = {layer: [get_gradient_edge(p).node for p in params]
                            for layer, params in self.params.items()}

    def detach(self) -> None:
        _ROOTS.pop(self.module, None)
        for layer in self.layers:
            _TRACKERS.pop(layer, None)
            layer.__class__ = own_class(layer)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._grad_nodes = {}

    def _refuse_rows(self, layer: nn.Module, record: Record) -> None:
        """Refuse a record whose first dim is not the model's batch: its rows are not samples
        (a sequence-first tensor, positions ``arange(T)`` with no batch dim, a batch folded
        into rows), and clipping them as samples would not bound any one sample's share."""
        batch = " or ".join(str(b) for b in sorted(self._input_batches))
        self._abort_pass()
        raise TrustlabError(
            f"layer {self.layers[layer]!r} got an input whose first dim is "
            f"{record.batch_size}, but the model's input batch is {batch}: per-sample clipping "
            "needs the batch in dim 0 of every layer's input, one row per sample. A "
            "sequence-first tensor: build the model with batch_first=True or transpose; "
            "positions embedded from torch.arange(T): expand them over the batch first "
            "(pos(torch.arange(T).expand(B, T))); samples split into several rows: keep one "
            "row per sample. No update was applied")

    def _untapped_use(self, name: str) -> Callable[[Tensor | None], None]:
        def refuse(grad: Tensor | None) -> None:
            if grad is None:  # what a tap returns for its parameters
                return
            self._abort_pass()
            raise TrustlabError(
                f"parameter {name!r} got a gradient from outside its layer (used directly in "
                "forward, e.g. h @ embedding.weight.T): per-sample clipping cannot see that "
                "use, and step() would silently drop it. Route every use through a layer "
                "module (tie an nn.Linear: linear.weight = embedding.weight)")
        return refuse

    def capture(self, layer: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
        kernel = self.kernels[layer]
        flat = kernel.flat_input(layer, *args, **kwargs)
        if flat is not None and flat[0] in self._input_batches:  # the model's input was a
            self._input_batches.discard(flat[0])  # flat index list: its samples are the bags
            self._input_batches.add(flat[1])
        out = kernel.capture(layer, self.sinks[layer], *args, **kwargs)
        if (self.layer_bounds is not None and out.grad_fn is not None
                and layer not in self._never_early):  # per-layer: await this use's record
            self._awaited.setdefault(layer, weakref.WeakSet()).add(out.grad_fn)
        return out

    def own_product_sink(self, layer: nn.Module) -> Callable[[Record], None]:
        """The sink of a layer whose product another layer computes (records that come from
        no capture of its own: it is never clipped early)."""
        self._never_early.add(layer)
        self._awaited.pop(layer, None)
        return self.sinks[layer]

    def _abort_pass(self) -> None:
        """Forget the running backward pass (an error is about to abort it)."""
        self.records.clear()
        self._early = _EarlyClipped()
        self._pass_norms, self._normed = None, set()
        self._callback_queued = False
        self._input_batches.clear()

    def _make_sink(self, layer: nn.Module) -> Callable[[Record], None]:
        def sink(record: Record) -> None:
            if not self._trains(layer):  # an input-gradient pass (an attack, a saliency
                return  # map): recording it would count samples twice
            node = torch._C._current_autograd_node()
            if node in self._recorded_nodes:
                self._abort_pass()
                raise TrustlabError(
                    f"layer {self.layers[layer]!r} was backpropagated twice through one forward "
                    "pass (backward with retain_graph=True) before optimizer.step(): its samples "
                    "would be clipped and counted twice. Add the losses and call backward once")
            if self._input_batches and record.batch_size not in self._input_batches:
                self._refuse_rows(layer, record)
            if node is not None:
                self._recorded_nodes.add(node)
            if layer in self._early.norms:  # never: its uses were all recorded already
                self._abort_pass()
                raise TrustlabError(f"layer {self.layers[layer]!r} was recorded after its "
                                    "per-layer clipping; no update was applied")
            self.records.setdefault(layer, []).append(record)
            if self.layer_bounds is None and layer not in self.shared:
                self._add_norms_now(layer, record)
            if not self._callback_queued:  # clip once the whole backward pass is done
                self._callback_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._end_of_pass)
            if self._awaited and self._last_awaited(layer, node):  # per-layer clipping only
                self._clip_early(layer)
        return sink

    def _add_norms_now(self, layer: nn.Module, record: Record) -> None:
        """Flat or automatic clipping: add a one-row Linear record's per-sample norms into the
        running pass's buffer while its output gradients are in cache (natively; the flush
        computes the norms of any record not added here). A layer's second record is not added
        (``rows`` is None for two records): the layer is then not one row per sample, and the
        flush takes its torch path."""
        row = self.kernels[layer].rows(layer, self.records[layer])
        if row is None or not native_rows_available([row]):
            return
        if self._pass_norms is None:
            self._pass_norms = torch.zeros(record.batch_size, dtype=torch.float32)
        elif self._pass_norms.shape[0] != record.batch_size:  # the flush reports mixed sizes
            return
        add_row_sq_norms(row, self._pass_norms)
        self._normed.add(layer)

    def _trains(self, layer: nn.Module) -> bool:
        """Whether the running backward pass computes a gradient of ``layer``'s parameters.
        The accumulator nodes held since attach are renewed when they say no: moving the model
        (``model.to(dtype or device)``) gives its parameters new ones."""
        if _computes_gradient_of(self._grad_nodes[layer]):
            return True
        self._grad_nodes[layer] = [get_gradient_edge(p).node for p in self.params[layer]]
        return _computes_gradient_of(self._grad_nodes[layer])

    def _end_of_pass(self) -> None:
        """Flush at the end of the backward pass, the outermost one: a reentrant backward run
        inside a node of an outer pass (``checkpoint(..., use_reentrant=True)``) ends while the
        outer pass still has layers to record. It then defers to that node's end, where the
        outer pass queues the flush again (a flush at the inner end clipped the two parts of
        each sample apart, each to C, and counted the samples twice)."""
        outer = torch._C._current_autograd_node()
        if outer is None:
            self.flush()
            return
        handles = []

        def requeue(*_: Any) -> None:
            handles.pop().remove()
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_pass)
        handles.append(outer.register_hook(requeue))

    def _last_awaited(self, layer: nn.Module, node: Any) -> bool:
        """Whether ``node`` was the last capture of ``layer`` awaiting its record."""
        awaited = self._awaited.get(layer)
        if awaited is None or node not in awaited:
            return False
        awaited.discard(node)
        return not awaited

    @torch.no_grad()
    def _clip_early(self, layer: nn.Module) -> None:
        """Per-layer clipping of a layer whose records of this backward pass are all in: its
        clipped sum is formed now and the records freed (:meth:`flush` merges the sums)."""
        records = self.records[layer]
        sizes = {r.batch_size for r in records} | self._early.batches
        if len(sizes) != 1 or 0 in sizes:  # flush reports mixed sizes, skips empty batches
            return
        batch = sizes.pop()
        del self.records[layer]
        records = [_in_dtype(r, self.params[layer][0].dtype) for r in records]
        sq_norms, state = self.kernels[layer].sq_norms(layer, records)
        factors = self._group_factors(layer, sq_norms, self._loss_scale(batch))
        for name, grad in self.kernels[layer].clipped_sum(layer, records, state,
                                                        factors).items():
            self._add(getattr(layer, name), grad, self._early.sums)
        self._early.batches.add(batch)
        self._early.norms[layer] = sq_norms

    def flush(self) -> None:
        """Clip the pending records' samples and add their clipped sums to ``summed``."""
        self._callback_queued = False
        self._input_batches.clear()
        if not self.records and not self._early.norms:  # nothing since the last flush
            return
        with torch.no_grad():  # also after backward(create_graph=True): the sums carry no graph
            self._clip()

    def _clip(self) -> None:
        """The flush's work: per-sample norms over all layers (with the layers per-layer
        clipping clipped early), clip factors, clipped sums. It takes the records itself (no
        caller holds them), so each layer's are freed once its sum is formed."""
        pending, self.records = self.records, {}
        early, self._early = self._early, _EarlyClipped()
        pass_norms, normed = self._pass_norms, self._normed
        self._pass_norms, self._normed = None, set()
        sizes = {r.batch_size for recs in pending.values() for r in recs} | early.batches
        if len(sizes) != 1:
            raise TrustlabError(f"layers saw different batch sizes {sorted(sizes)} in one "
                                "backward pass; per-sample clipping needs the batch in dim 0 "
                                "of every layer input (set batch_first=True), and forward "
                                "passes joined in one loss must have the same batch size (a "
                                "GAN's fake batch: as many as the real one)")
        batch = sizes.pop()
        if batch == 0:  # an empty Poisson batch contributes nothing; step() still adds noise
            return
        # mixed precision (autocast): norms, clip factors and clipped sums all in the
        # parameters' dtype, from the same values, so no sample exceeds C by rounding
        pending = {layer: [_in_dtype(r, self.params[layer][0].dtype) for r in records]
                   for layer, records in pending.items()}
        scale = self._loss_scale(batch)
        if self._flush_rows(pending, scale, pass_norms, normed):
            self.samples += batch
            return
        with shared_results(_shared_data(pending)):
            layer_norms, states, shared = self._sq_norms(pending)
        first, *rest = [*early.norms.values(), *layer_norms.values()]
        norms = sum(rest, first) * scale ** 2
        self._check_finite(norms, {**early.norms, **layer_norms})
        self.last_sq_norms = norms
        weights = self._clip_weights(layer_norms, norms, scale)
        # smallest layers first, each layer's records dropped once its sum is formed: the
        # largest layer's temporaries then coexist with little else (the peak of the flush)
        for layer in sorted(states, key=lambda layer: _record_bytes(pending[layer])):
            records, state = pending.pop(layer), states.pop(layer)
            for name, grad in self.kernels[layer].clipped_sum(layer, records, state,
                                                            weights[layer]).items():
                self._add(getattr(layer, name), grad)
            del records, state
        for p, grads in shared.items():
            self._add(p, scale_accumulate(grads.flatten(1), weights[None]).view_as(p))
        for p, grad in early.sums.items():
            self._add(p, grad)
        self.samples += batch

    def _clip_weights(self, layer_norms: dict[nn.Module | None, Tensor], norms: Tensor,
                      scale: float) -> dict[nn.Module | None, Tensor]:
        """Each clipping group's per-sample factors: one set for all groups from the total
        norms (flat, automatic), or each group's own from its norms and bound (per-layer)."""
        if self.layer_bounds is not None:
            return {group: self._group_factors(group, group_norms, scale)
                    for group, group_norms in layer_norms.items()}
        rule = automatic_factors if self.clipping == "automatic" else clip_factors
        factors = rule(norms, self.max_grad_norm, scale)
        self._count_unclipped(factors, scale)
        return dict.fromkeys(layer_norms, factors)

    def _count_unclipped(self, factors: Tensor, scale: float) -> None:
        """Adaptive clipping's count of the samples within the bound (factor 1:
        ``||g_i|| + eps <= C``)."""
        if self.count_unclipped:
            self.unclipped = self.unclipped + (factors == scale).sum()

    def _flush_rows(self, pending: dict[nn.Module, list[Record]], scale: float,
                    pass_norms: Tensor | None, normed: set[nn.Module]) -> bool:
        """Flat or automatic clipping when every layer is a Linear that saw one row per sample,
        natively (:mod:`trustlab.kernels.linear_rows`): the norms (``pass_norms`` holds those of
        the ``normed`` layers, added as their records arrived), the clip factors, then each
        layer's weight and bias sums in one call, smallest layer first, each layer's records
        dropped once summed (as :meth:`flush` does). False where that does not apply."""
        if self.layer_bounds is not None or (self.shared and
                                             any(layer in self.shared for layer in pending)):
            return False
        # a comprehension: no loop variable left holding a layer's records past its sum
        rows = {layer: self.kernels[layer].rows(layer, records)
                for layer, records in pending.items()}
        if not rows or None in rows.values() or not native_rows_available(list(rows.values())):
            return False
        automatic = self.clipping == "automatic"
        clipped = native_rows_clip([row for layer, row in rows.items() if layer not in normed],
                                   self.max_grad_norm, scale,
                                   AUTO_S_GAMMA if automatic else CLIP_EPS, cap=not automatic,
                                   norms=pass_norms if normed else None)
        if clipped is None:
            return False
        if not math.isfinite(clipped.total):  # the torch path's norms name the layer
            self._check_finite(clipped.sq_norms, self._sq_norms(pending)[0])
        self.last_sq_norms = clipped.sq_norms
        self._count_unclipped(clipped.factors, scale)
        for layer in sorted(rows, key=lambda layer: _record_bytes(pending[layer])):
            row = rows.pop(layer)
            del pending[layer]
            weight, bias = native_rows_sums(row, clipped.factors)
            if weight is not None:
                self._add(row.weight, weight)
            if bias is not None:
                self._add(row.bias, bias)
        return True

    def _group_factors(self, group: nn.Module | None, sq_norms: Tensor, scale: float) -> Tensor:
        """Per-layer clipping: a group's factors from its own norms and bound."""
        bound = self.layer_bounds[group]  # type: ignore[index]
        return clip_factors(sq_norms * scale ** 2, bound, scale)

    def _loss_scale(self, batch: int) -> float:
        """What turns the gradients of a mean loss into those of each sample's own loss."""
        return float(batch) if self.loss_reduction == "mean" else 1.0

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

    def _add(self, p: Tensor, grad: Tensor, into: dict[Tensor, Tensor] | None = None) -> None:
        """Add ``grad`` to ``p``'s clipped sum (in ``summed``, or ``into``)."""
        sums = self.summed if into is None else into
        if grad.dtype != p.dtype:
            grad = grad.to(p.dtype)
        before = sums.get(p)
        sums[p] = grad if before is None else before + grad

    def reset(self) -> None:
        self.records.clear()
        self._pass_norms, self._normed = None, set()
        if self._early.norms:
            self._early = _EarlyClipped()
        self.summed.clear()
        self.samples = self.unclipped = 0
        self._recorded_nodes.clear()


def _positive_bound(bound: Any, what: str = "max_grad_norm") -> float:
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not 0 < bound < math.inf:
        hint = ("; one bound per layer needs clipping='per_layer'"
                if isinstance(bound, list | tuple) else "")
        raise ConfigError(f"{what} must be a finite number > 0, got {bound!r}{hint}")
    return float(bound)


def _per_layer_bounds(groups: dict[nn.Module | None, str],
                      max_grad_norm: float | Sequence[float]) -> dict[nn.Module | None, float]:
    """Each clipping group's bound: ``C / sqrt(G)`` each from one number ``C`` (the
    sensitivity stays ``C``), or one number per group, in the model's layer order."""
    if isinstance(max_grad_norm, numbers.Real):
        bound = _positive_bound(max_grad_norm) / math.sqrt(max(len(groups), 1))
        return dict.fromkeys(groups, bound)
    bounds = list(max_grad_norm)
    if len(bounds) != len(groups):
        raise ConfigError(
            f"per-layer clipping needs one max_grad_norm per clipping group, {len(groups)} in "
            f"this order: {list(groups.values())}; got {len(bounds)} ({bounds})")
    return {group: _positive_bound(b, f"max_grad_norm of {groups[group]!r}")
            for group, b in zip(groups, bounds)}


@dataclasses.dataclass
class _EarlyClipped:
    """What per-layer clipping clipped during the running backward pass: batch sizes, each
    layer's squared norms, the clipped sums (merged into ``summed`` by the flush)."""

    batches: set[int] = dataclasses.field(default_factory=set)
    norms: dict[nn.Module, Tensor] = dataclasses.field(default_factory=dict)
    sums: dict[Tensor, Tensor] = dataclasses.field(default_factory=dict)


def _note_input_batch(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the module given to make_private: its tracker notes the batch size
    of a forward pass that records (the first tensor argument's dim 0, or dim 1 for a module
    built with ``batch_first=False``; a ``PackedSequence``'s first batch size). A module-level
    function, so that a deep copy of the module carries no tracker (the copy is not in
    ``_ROOTS``: the hook does nothing)."""
    tracker = _ROOTS.get(module)
    if tracker is None or not torch.is_grad_enabled():
        return
    packed = nn.utils.rnn.PackedSequence
    first = next((t for t in (*args, *kwargs.values()) if isinstance(t, Tensor | packed)), None)
    if isinstance(first, packed):  # an empty one has no batch sizes
        tracker._input_batches.add(int(first.batch_sizes[0]) if len(first.batch_sizes) else 0)
        return
    # the module's own attribute (an RNN's), else its class's (a property); a miss through
    # nn.Module.__getattr__ would cost more than the rest of this hook
    batch_first = (vars(module)["batch_first"] if "batch_first" in vars(module)
                   else getattr(type(module), "batch_first", True))
    if isinstance(batch_first, property):
        batch_first = getattr(module, "batch_first")
    dim = 1 if batch_first is False else 0
    if first is not None and first.dim() > dim:
        tracker._input_batches.add(first.shape[dim])


def _computes_gradient_of(grad_nodes: list) -> bool:
    """Whether the running backward pass computes a gradient for any of the parameters whose
    gradient-accumulator nodes are ``grad_nodes``: True for ``loss.backward()``, False for
    ``torch.autograd.grad(loss, x)`` or ``backward(inputs=[x])`` (gradients of inputs only, as
    attacks and explanations take them)."""
    for node in grad_nodes:
        try:
            if torch._C._will_engine_execute_node(node):
                return True
        except RuntimeError:  # torch.autograd.grad(loss, p): asks for p's gradient itself
            return True
    return False


def _in_dtype(record: Record, dtype: torch.dtype) -> Record:
    """``record`` with its floating-point tensors in ``dtype`` (itself when they are)."""
    if record.a.dtype == dtype and record.g.dtype == dtype:  # the common case, checked first
        return record
    a, g = (t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t
            for t in (record.a, record.g))
    if a is record.a and g is record.g:
        return record
    return dataclasses.replace(record, a=a, g=g)


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
