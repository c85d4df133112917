"""Per-sample gradients of any layer by ``torch.func`` (``vmap`` over a ``vjp``), opt in per type.

For a custom layer with trainable parameters of its own and no kernel, the way Opacus's
functorch mode handles one: its backward records the layer's input ``a`` and output gradient
``g`` (the input gradient comes from a ``vjp`` of the layer's plain forward), and the per-sample
gradients are ``vjp`` of one sample's forward, ``vmap``-ed over the batch. They are materialised
(memory B × the layer's parameters) and kept for the clipped sum ``sum_i w_i G_i``.

Only for layers that treat each sample on its own (no batch statistics: those would make the
"per-sample" gradients, and so the clipping, wrong), take one tensor whose first dim is the
batch, return one tensor, and hold no trainable sub-layers. :func:`register_vmap_kernel` is the
user's statement that a layer type meets that.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from trustlab.errors import TrustlabError
from trustlab.kernels.clip import scale_accumulate
from trustlab.kernels.linear import row_sq_norms
from trustlab.kernels.registry import LayerKernel, Record, Sink, own_class, register_kernel

Run = Callable[[dict[str, Tensor], Tensor], Tensor]


class _VmapTap(torch.autograd.Function):
    """``run(params, x)`` whose backward records (x, g) and returns only the input gradient.
    The parameters are inputs (so a backward pass is seen to train them) and get no gradient."""

    @staticmethod
    def forward(ctx: Any, run: Run, names: list[str], sink: Sink, x: Tensor,
                *params: Tensor) -> Tensor:
        ctx.run, ctx.names, ctx.sink = run, names, sink
        ctx.save_for_backward(x, *params)
        return run(dict(zip(names, params)), x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        ctx.sink(Record(x, g))
        grad_x = None
        if ctx.needs_input_grad[3]:
            values = dict(zip(ctx.names, params))
            _, vjp = torch.func.vjp(lambda x: ctx.run(values, x), x)
            grad_x = vjp(g)[0]
        return (None, None, None, grad_x) + (None,) * len(params)


def _plain_run(layer: nn.Module) -> Run:
    """The layer's own forward (not the engine's tapped one) on parameters given by name."""
    plain = _Plain(layer)

    def run(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.func.functional_call(plain, {f"layer.{n}": p for n, p in params.items()},
                                          (x,))
    return run


class _Plain(nn.Module):
    """Calls ``layer``'s own forward: while tracked, the layer's class is a subclass whose
    forward would capture again (:func:`~trustlab.kernels.registry.own_class`)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.forward_of = own_class(layer).forward

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_of(self.layer, x)


class VmapKernel(LayerKernel):
    """Materialised per-sample gradients from ``torch.func``; see the module doc."""

    runs_own_forward = True

    def capture(self, layer: nn.Module, sink: Sink, *args: Any, **kwargs: Any) -> Tensor:
        if len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
            raise TypeError(f"{type(layer).__name__} is registered with register_vmap_kernel, "
                            "which takes layers called with one tensor (batch first); it was "
                            f"called with {len(args)} positional and {len(kwargs)} keyword "
                            "arguments")
        names = self.param_names(layer)
        out = _VmapTap.apply(_plain_run(layer), names, sink, args[0],
                             *(getattr(layer, n) for n in names))
        if not isinstance(out, Tensor):
            raise TypeError(f"{type(layer).__name__} returns {type(out).__name__}; "
                            "register_vmap_kernel takes layers that return one tensor")
        return out

    def per_sample_grads(self, layer: nn.Module, records: list[Record]) -> dict[str, Tensor]:
        run, names = _plain_run(layer), self.param_names(layer)
        params = {n: getattr(layer, n).detach() for n in names}

        def one(x: Tensor, g: Tensor) -> dict[str, Tensor]:
            _, vjp = torch.func.vjp(lambda p: run(p, x[None]), params)
            return vjp(g[None])[0]

        total: dict[str, Tensor] = {}
        for record in records:
            try:
                grads = torch.func.vmap(one)(record.a, record.g)
            except RuntimeError as err:
                if "random" not in str(err):
                    raise
                raise TrustlabError(
                    f"{type(layer).__name__} (registered with register_vmap_kernel) draws random "
                    "numbers in its forward (dropout?): its per-sample gradients are recomputed "
                    "one sample at a time, which cannot draw the same mask again. Move the "
                    "random part out of the layer (e.g. an nn.Dropout after it)") from err
            total = {n: grads[n] + total[n] if n in total else grads[n] for n in names}
        return total

    def sq_norms(self, layer: nn.Module, records: list[Record]) -> tuple[Tensor, Any]:
        grads = self.per_sample_grads(layer, records)
        return sum(row_sq_norms(g) for g in grads.values()), grads

    def clipped_sum(self, layer: nn.Module, records: list[Record], state: Any,
                    weights: Tensor) -> dict[str, Tensor]:
        return {n: scale_accumulate(g.flatten(1), weights).view(g.shape[1:])
                for n, g in state.items()}


def register_vmap_kernel(layer_type: type[nn.Module]) -> type[nn.Module]:
    """Let DP training cover ``layer_type``'s own parameters with :class:`VmapKernel` (usable
    as a class decorator): for layers that treat each sample on its own and hold no trainable
    sub-layers (see the module doc), a subclass of a covered layer whose forward is its own
    included."""
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"register_vmap_kernel takes an nn.Module subclass, got {layer_type!r}")
    register_kernel(type(f"VmapKernel[{layer_type.__name__}]", (VmapKernel,),
                         {"module_type": layer_type}))
    return layer_type
