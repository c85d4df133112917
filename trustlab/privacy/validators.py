"""Check a model before DP training: every trainable parameter must sit in a layer the kernels
cover. Unsupported layers raise an error that names them and the fix; :func:`fix` swaps the
fixable ones (recurrent nets, multi-head attention, BatchNorm) for DP-friendly equivalents."""

from __future__ import annotations

from typing import Callable

from torch import nn
from torch.nn.utils import parametrize

from trustlab.errors import ConfigError
from trustlab.kernels import VmapKernel, kernel_for, overridden_methods, registered_base
from trustlab.privacy.attention import DPMultiheadAttention
from trustlab.privacy.layers import DPGRU, DPLSTM, DPRNN, unsupported_option

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


def _batch_norm_fix(bn: nn.Module) -> nn.Module:
    channels = bn.num_features
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    norm = nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        norm.to(bn.weight).requires_grad_(bn.weight.requires_grad)
    return norm


_SAME = "(same function on padded batches, weights copied)"
# module type -> (why it is unsupported, the fix in words, the replacement)
_FIXES: dict[type, tuple[str, str, Callable[[nn.Module], nn.Module]]] = {
    nn.LSTM: ("its fused kernel keeps the weights out of reach of per-sample kernels",
              f"model = trustlab.privacy.fix(model) swaps in DPLSTM {_SAME}", DPLSTM.from_module),
    nn.GRU: ("its fused kernel keeps the weights out of reach of per-sample kernels",
             f"model = trustlab.privacy.fix(model) swaps in DPGRU {_SAME}", DPGRU.from_module),
    nn.RNN: ("its fused kernel keeps the weights out of reach of per-sample kernels",
             f"model = trustlab.privacy.fix(model) swaps in DPRNN {_SAME}", DPRNN.from_module),
    nn.MultiheadAttention: (
        "its packed in_proj_weight is not a layer the kernels cover",
        "model = trustlab.privacy.fix(model) swaps in DPMultiheadAttention (same function, "
        "weights copied)", DPMultiheadAttention.from_module),
}
_CELLS = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)


def _unfixable(layer: nn.Module) -> str | None:
    """Why :func:`fix` has no exact replacement for a layer of a fixable type, else None."""
    if (option := unsupported_option(layer)) is not None:
        return option
    if isinstance(layer, _BATCH_NORMS) and isinstance(layer, nn.modules.lazy.LazyModuleMixin) \
            and layer.has_uninitialized_params():
        return "uninitialised lazy parameters (run one forward pass first)"
    return None


def _problem(layer: nn.Module) -> tuple[str, str] | None:
    """(why, fix) when ``layer`` cannot be trained with per-sample clipping, else None."""
    if isinstance(layer, _BATCH_NORMS):
        why = "BatchNorm mixes the samples of a batch, so per-sample gradients do not exist"
        if (reason := _unfixable(layer)) is not None:
            return why, f"use GroupNorm or LayerNorm (fix cannot swap a BatchNorm with {reason})"
        return why, ("use GroupNorm or LayerNorm; model = trustlab.privacy.fix(model) swaps in "
                     "GroupNorm (retrain: it computes a different function)")
    for cls, (why, how, _) in _FIXES.items():
        if type(layer) is cls:
            if (reason := _unfixable(layer)) is not None:
                return why, (f"build it without {reason} (its DP equivalent has no such "
                             "option, so fix cannot swap it)")
            return why, how
    if isinstance(layer, parametrize.ParametrizationList):
        return ("a parametrization (parametrizations.weight_norm, spectral_norm, orthogonal) "
                "computes the layer's tensor from these parameters, and no kernel takes "
                "per-sample gradients through it",
                "train without it: torch.nn.utils.parametrize.remove_parametrizations(layer, "
                "name) keeps the current values as a plain parameter")
    if type(layer) in _CELLS:
        return ("its fused cell kernel keeps the weights out of reach of per-sample kernels",
                "run DPLSTM/DPGRU/DPRNN over the sequence (fix swaps whole nn.LSTM/GRU/RNN "
                "layers), or write the cell from nn.Linear layers")
    if isinstance(layer, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer) \
            and not layer.self_attn.batch_first:
        return ("its Linear layers see (T, B, d) inputs, but per-sample gradients need the "
                "batch first", "build it with batch_first=True")
    if isinstance(layer, nn.Embedding | nn.EmbeddingBag) and (
            layer.max_norm is not None or layer.sparse or layer.scale_grad_by_freq):
        return ("max_norm, sparse and scale_grad_by_freq make a sample's gradient depend on "
                "the batch or rewrite weights in place", "build the embedding without them")
    if isinstance(layer, nn.EmbeddingBag) and layer.mode == "max":
        return ("mode='max' sends each dimension's gradient to one entry of the bag, which "
                "trustlab has no kernel for", "use mode='sum' or mode='mean'")
    if isinstance(layer, nn.modules.instancenorm._InstanceNorm) and layer.track_running_stats:
        return ("its running statistics average the training data with no noise (released with "
                "the model, they leak it) and DP training does not update them",
                "build it with track_running_stats=False")
    return _kernel_problem(layer)


def _kernel_problem(layer: nn.Module) -> tuple[str, str] | None:
    """(why, fix) when no kernel computes the gradients of exactly ``layer``'s own trainable
    parameters, else None."""
    own = [n for n, p in layer.named_parameters(recurse=False) if p.requires_grad]
    kernel = kernel_for(layer)
    if kernel is None and own and (methods := overridden_methods(layer)):
        base = registered_base(layer).__name__  # type: ignore[union-attr]
        return (f"it overrides nn.{base}'s {' and '.join(methods)}, but the {base} kernel "
                f"computes nn.{base}'s own function (it would train a different model)",
                f"compute the extra outside the layer, or trustlab.kernels."
                f"register_vmap_kernel({type(layer).__name__})")
    if kernel is None and own:
        nested = any(p.requires_grad for n, p in layer.named_parameters() if "." in n)
        by_vmap = ("move those parameters into a module of their own and register it with "
                   "trustlab.kernels.register_vmap_kernel (it takes no trainable sub-layers)"
                   if nested else "(a layer that treats each sample on its own) "
                   f"trustlab.kernels.register_vmap_kernel({type(layer).__name__})")
        return (f"it holds trainable parameters {own} and trustlab has no per-sample-gradient "
                "kernel for it", "build it from nn.Linear/Conv1d-3d/Embedding/EmbeddingBag/"
                "LayerNorm/RMSNorm/GroupNorm/InstanceNorm, freeze those parameters, register a "
                f"LayerKernel with trustlab.kernels.register_kernel, or {by_vmap}")
    if kernel is None:
        return None
    if isinstance(kernel, VmapKernel) and (nested := [
            n for n, p in layer.named_parameters() if p.requires_grad and "." in n]):
        return (f"it is registered with register_vmap_kernel but holds trainable sub-layers "
                f"({', '.join(nested)}), which that kernel cannot see",
                "register the layers that hold the parameters themselves")
    if uncovered := sorted(set(own) - set(kernel.param_names(layer))):
        return (f"its parameters {uncovered} are not ones the {type(layer).__name__} kernel "
                f"computes gradients for ({', '.join(kernel.parameters or ())}): a "
                "reparametrisation makes the weight from them (old-style weight_norm: weight_g, "
                "weight_v; pruning or old-style spectral_norm: weight_orig) or they were added "
                "to the layer, and they would get noise only",
                "remove the reparametrisation (torch.nn.utils.remove_weight_norm, "
                "torch.nn.utils.prune.remove, torch.nn.utils.remove_spectral_norm) or move an "
                "added parameter into a module of its own")
    return None


def validate(module: nn.Module) -> None:
    """Raise :class:`ConfigError` listing every layer DP training cannot handle, with fixes."""
    problems = [f"  - {name or '<root>'} ({type(layer).__name__}): {why}; fix: {how}"
                for name, layer in module.named_modules()
                if (found := _problem(layer)) for why, how in [found]]
    if problems:
        raise ConfigError("model is not ready for DP-SGD:\n" + "\n".join(problems))


def fix(module: nn.Module) -> nn.Module:
    """Replace the fixable layers (recurrent nets, multi-head attention, BatchNorm) and return
    the module, or its replacement when it is one itself: ``model = fix(model)``. Frozen
    parameters stay frozen; a layer registered in several places gets one replacement. Call
    it before building the optimizer (the replacements are new parameters). Refuses, changing
    nothing, when a fixable type has an option with no equivalent (see :func:`validate`)."""
    unfixable = [f"  - {name or '<root>'} ({type(layer).__name__}): {reason}"
                 for name, layer in module.named_modules()
                 if _replacement(layer) is not None and (reason := _unfixable(layer))]
    if unfixable:
        raise ConfigError("fix cannot swap these layers (no DP equivalent of the option):\n"
                          + "\n".join(unfixable))
    fixed = _swap(module, _fixed, {})
    for encoder in fixed.modules():  # its nested-tensor fast path needs nn.MultiheadAttention
        if isinstance(encoder, nn.TransformerEncoder) and encoder.use_nested_tensor:
            encoder.use_nested_tensor = False
            setattr(encoder, _NESTED_TENSOR_OFF, True)  # unfix turns it back on
    return fixed


def unfix(module: nn.Module) -> nn.Module:
    """Undo :func:`fix` for the exact swaps (DP layers back to their PyTorch originals) and
    return the module or its replacement, so a checkpoint loads into the architecture it was
    built from."""
    def original(layer: nn.Module) -> nn.Module | None:
        if isinstance(layer, DPLSTM | DPGRU | DPRNN | DPMultiheadAttention):
            return layer.to_module()
        return None
    restored = _swap(module, original, {})
    for encoder in restored.modules():
        if getattr(encoder, _NESTED_TENSOR_OFF, False):
            encoder.use_nested_tensor = True
            delattr(encoder, _NESTED_TENSOR_OFF)
    return restored


_NESTED_TENSOR_OFF = "_trustlab_nested_tensor_off"  # set by fix on the encoders it changed


def _replacement(layer: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
    if isinstance(layer, _BATCH_NORMS):
        return _batch_norm_fix
    return _FIXES[type(layer)][2] if type(layer) in _FIXES else None


def _fixed(layer: nn.Module) -> nn.Module | None:
    replace = _replacement(layer)
    return None if replace is None else replace(layer)


def _swap(module: nn.Module, replace: Callable[[nn.Module], nn.Module | None],
          memo: dict[nn.Module, nn.Module]) -> nn.Module:
    """``module`` with every layer that ``replace`` maps to a new one swapped, depth first; a
    layer registered in several places (or twice in one container) gets one replacement."""
    if module in memo:
        return memo[module]
    new = replace(module)
    memo[module] = module if new is None else new
    if new is not None:
        return new
    for name, child in list(module._modules.items()):
        if child is not None and (swapped := _swap(child, replace, memo)) is not child:
            setattr(module, name, swapped)
    return module
