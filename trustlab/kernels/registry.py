"""Registry of per-layer kernels, keyed by module type (one module per layer family).

A :class:`LayerKernel` knows, for one layer family, how to

* run the layer's forward so that the backward pass computes only the *input* gradient and
  hands the layer's activations and output gradient to a sink (book-keeping, Bu et al. 2023:
  the batched weight gradient is not computed by autograd);
* turn those records into per-sample squared gradient norms (ghost norm or direct, by cost);
* turn them into the clipped sum ``sum_i w_i g_i`` of the per-sample gradients.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from trustlab.kernels.linear_rows import RowLayer

Sink = Callable[["Record"], None]


@dataclass
class Record:
    """One call of a layer: its activations ``a`` (family-specific form) and output grad ``g``."""

    a: Tensor
    g: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.g.shape[0]


class LayerKernel:
    """Base class; subclasses register with :func:`register_kernel`."""

    module_type: type[nn.Module]
    # whether the kernel runs the layer's own forward (any subclass is then covered); a kernel
    # that computes ``module_type``'s function itself covers no subclass overriding one of
    # ``function_methods``, the methods that define that function
    runs_own_forward = False
    function_methods: tuple[str, ...] = ("forward",)
    # the names of the parameters it computes gradients for; None: all the layer's own
    parameters: tuple[str, ...] | None = None

    def param_names(self, layer: nn.Module) -> list[str]:
        """Names of the layer's trainable parameters this kernel produces gradients for."""
        return [n for n, p in layer.named_parameters(recurse=False)
                if p.requires_grad and self.covers(n)]

    def covers(self, name: str) -> bool:
        """Whether it computes gradients for the layer's own parameter ``name``."""
        return self.parameters is None or name in self.parameters

    def capture(self, layer: nn.Module, sink: Sink, *args: Any, **kwargs: Any) -> Tensor:
        """The layer's forward, with its backward reporting a :class:`Record` to ``sink``."""
        raise NotImplementedError

    def flat_input(self, layer: nn.Module, *args: Any, **kwargs: Any) -> tuple[int, int] | None:
        """``(rows, samples)`` when this call's input is, by the layer's own convention, not
        one row per sample (``nn.EmbeddingBag``'s flat indices with offsets); else None."""
        return None

    def sq_norms(self, layer: nn.Module, records: list[Record]) -> tuple[Tensor, Any]:
        """Per-sample squared norms over the layer's parameters, shape (B,), and a state
        that :meth:`clipped_sum` may reuse (e.g. per-sample gradients already materialised)."""
        raise NotImplementedError

    def clipped_sum(self, layer: nn.Module, records: list[Record], state: Any,
                    weights: Tensor) -> dict[str, Tensor]:
        """``{param name: sum_i weights[i] * per-sample grad_i}``."""
        raise NotImplementedError

    def per_sample_grads(self, layer: nn.Module, records: list[Record]) -> dict[str, Tensor]:
        """Materialised per-sample gradients ``{name: (B, *param.shape)}`` (shared params)."""
        raise NotImplementedError

    def rows(self, layer: nn.Module, records: list[Record]) -> RowLayer | None:
        """The records as one Linear call on (B, p) rows, whose per-sample gradients are outer
        products (the engine then clips all such layers in one native call); None when they
        are not that."""
        return None


_KERNELS: dict[type[nn.Module], LayerKernel] = {}


def register_kernel(kernel_cls: type[LayerKernel]) -> type[LayerKernel]:
    """Class decorator: register one instance of ``kernel_cls`` for its ``module_type``."""
    _KERNELS[kernel_cls.module_type] = kernel_cls()
    return kernel_cls


def kernel_for(layer: nn.Module) -> LayerKernel | None:
    """The kernel registered for ``type(layer)`` (exact type first, then base classes); None
    for a subclass that overrides a method defining the function of the class a kernel
    computes itself (:func:`overridden_methods`). A tracked layer is looked up by the class it
    stands for."""
    cls = registered_base(layer)
    if cls is None or overridden_methods(layer):
        return None
    return _KERNELS[cls]


def overridden_methods(layer: nn.Module) -> list[str]:
    """The methods defining its registered base's function (forward, Conv's _conv_forward…)
    that ``layer``'s class overrides, where the kernel computes that function itself: its
    function is then not the one the kernel computes."""
    cls = registered_base(layer)
    if cls is None or _KERNELS[cls].runs_own_forward:
        return []
    own = own_class(layer)
    return [m for m in _KERNELS[cls].function_methods if getattr(own, m) is not getattr(cls, m)]


def registered_base(layer: nn.Module) -> type[nn.Module] | None:
    """The nearest class of ``layer`` (itself or a base) that a kernel is registered for."""
    return next((cls for cls in own_class(layer).__mro__ if cls in _KERNELS), None)


def own_class(layer: nn.Module) -> type[nn.Module]:
    """``layer``'s class, or while the DP engine tracks it, the class its tapped one stands for."""
    return getattr(type(layer), "untapped_class", type(layer))


def supported_types() -> list[type[nn.Module]]:
    return list(_KERNELS)


def use_triton(t: Tensor) -> bool:
    """Triton kernels on CUDA tensors; the torch reference path elsewhere."""
    return t.is_cuda and _triton_available()


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def stack_sequences(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Reshape each call's (a, g) to (B, T_k, ·) and concatenate along T: a layer used several
    times per step (shared weights, an unrolled RNN cell) has per-sample gradient
    ``sum_k g_k^T a_k``, which is the gradient of one call on the concatenated sequence."""
    batch = {g.shape[0] for _, g in parts}
    if len(batch) != 1:
        raise ValueError(f"a layer saw different batch sizes {sorted(batch)} in one step; "
                         "per-sample gradients need the batch in dim 0 (set batch_first=True)")
    a_parts = [a.reshape(a.shape[0], -1, a.shape[-1]) for a, _ in parts]
    g_parts = [g.reshape(g.shape[0], -1, g.shape[-1]) for _, g in parts]
    if len(parts) == 1:
        return a_parts[0], g_parts[0]
    return torch.cat(a_parts, dim=1), torch.cat(g_parts, dim=1)


_SHARED: contextvars.ContextVar[tuple[set, dict] | None] = contextvars.ContextVar(
    "_SHARED", default=None)


def data_key(t: Tensor) -> tuple:
    """Identifies a tensor's data and the view of it (two tensor objects may share both)."""
    return t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device


@contextlib.contextmanager
def shared_results(shared: set[tuple]) -> Iterator[None]:
    """Within the block, :func:`once` computes each result from a tensor whose
    :func:`data_key` is in ``shared`` once (one flush: an LSTM's input and hidden projections
    share their output gradient); other results are not kept."""
    token = _SHARED.set((shared, {}))
    try:
        yield
    finally:
        _SHARED.reset(token)


def once(name: str, t: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
    """``compute(t)``, reused inside a :func:`shared_results` block for tensors it names."""
    state = _SHARED.get()
    key = data_key(t)
    if state is None or key not in state[0]:
        return compute(t)
    cache = state[1]
    if (name, key) not in cache:
        cache[name, key] = (t, compute(t))  # t held, so that its memory is not reused
    return cache[name, key][1]
