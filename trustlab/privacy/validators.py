"""Check a model before DP training: every trainable parameter must sit in a layer the kernels
cover. Unsupported layers raise an error that names them and the fix; :func:`fix` swaps the
fixable ones (recurrent nets, multi-head attention, BatchNorm) for DP-friendly equivalents."""

from __future__ import annotations

from typing import Callable

from torch import nn

from trustlab.errors import ConfigError
from trustlab.kernels import VmapKernel, kernel_for, registered_base
from trustlab.privacy.layers import DPGRU, DPLSTM, DPRNN, DPMultiheadAttention

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


def _batch_norm_fix(bn: nn.Module) -> nn.Module:
    channels = bn.num_features
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    norm = nn.GroupNorm(groups, channels, affine=bn.affine)
    return norm.to(bn.weight) if bn.affine else norm


# module type -> (why it is unsupported, the fix in words, the replacement or None)
_FIXES: dict[type, tuple[str, str, Callable[[nn.Module], nn.Module] | None]] = {
    nn.LSTM: ("its fused kernel keeps the weights out of reach of per-sample kernels",
              "trustlab.privacy.fix(model) swaps in DPLSTM (same function, weights copied)",
              DPLSTM.from_module),
    nn.GRU: ("its fused kernel keeps the weights out of reach of per-sample kernels",
             "trustlab.privacy.fix(model) swaps in DPGRU (same function, weights copied)",
             DPGRU.from_module),
    nn.RNN: ("its fused kernel keeps the weights out of reach of per-sample kernels",
             "trustlab.privacy.fix(model) swaps in DPRNN (same function, weights copied)",
             DPRNN.from_module),
    nn.MultiheadAttention: (
        "its packed in_proj_weight is not a layer the kernels cover",
        "trustlab.privacy.fix(model) swaps in DPMultiheadAttention (same function, weights "
        "copied)", DPMultiheadAttention.from_module),
}


def _problem(layer: nn.Module) -> tuple[str, str] | None:
    """(why, fix) when ``layer`` cannot be trained with per-sample clipping, else None."""
    if isinstance(layer, _BATCH_NORMS):
        return ("BatchNorm mixes the samples of a batch, so per-sample gradients do not exist",
                "use GroupNorm or LayerNorm; trustlab.privacy.fix(model) swaps in GroupNorm "
                "(retrain: it computes a different function)")
    for cls, (why, how, _) in _FIXES.items():
        if type(layer) is cls:
            return why, how
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
    if kernel is None and own and (base := registered_base(layer)) is not None:
        return (f"it overrides the forward of nn.{base.__name__}, whose kernel "
                f"computes {base.__name__}'s own function (it would train a different model)",
                f"compute the extra outside the layer, or trustlab.kernels."
                f"register_vmap_kernel({type(layer).__name__})")
    if kernel is None and own:
        return (f"it holds trainable parameters {own} and trustlab has no per-sample-gradient "
                "kernel for it", "build it from nn.Linear/Conv1d-3d/Embedding/EmbeddingBag/"
                "LayerNorm/RMSNorm/GroupNorm/InstanceNorm, freeze those parameters, register a "
                "LayerKernel with trustlab.kernels.register_kernel, or (a layer that treats "
                "each sample on its own) trustlab.kernels.register_vmap_kernel(its class)")
    if kernel is None:
        return None
    if isinstance(kernel, VmapKernel) and (nested := [
            n for n, p in layer.named_parameters() if p.requires_grad and "." in n]):
        return (f"it is registered with register_vmap_kernel but holds trainable sub-layers "
                f"({', '.join(nested)}), which that kernel cannot see",
                "register the layers that hold the parameters themselves")
    if uncovered := sorted(set(own) - set(kernel.param_names(layer))):
        return (f"its parameters {uncovered} are not ones the {type(layer).__name__} kernel "
                f"computes gradients for ({', '.join(kernel.parameters or ())}): a hook or "
                "reparametrisation (old-style weight_norm) makes the weight from them, and they "
                "would get noise only", "train the plain weight (torch.nn.utils."
                "remove_weight_norm)")
    return None


def validate(module: nn.Module) -> None:
    """Raise :class:`ConfigError` listing every layer DP training cannot handle, with fixes."""
    problems = [f"  - {name or '<root>'} ({type(layer).__name__}): {why}; fix: {how}"
                for name, layer in module.named_modules()
                if (found := _problem(layer)) for why, how in [found]]
    if problems:
        raise ConfigError("model is not ready for DP-SGD:\n" + "\n".join(problems))


def fix(module: nn.Module) -> nn.Module:
    """Replace fixable layers in place (and return the module); call before building the
    optimizer, since the replacements are new parameters."""
    for name, child in list(module.named_children()):
        if isinstance(child, _BATCH_NORMS):
            setattr(module, name, _batch_norm_fix(child))
        elif type(child) in _FIXES and _FIXES[type(child)][2] is not None:
            setattr(module, name, _FIXES[type(child)][2](child))
        else:
            fix(child)
    return module


def unfix(module: nn.Module) -> nn.Module:
    """Undo :func:`fix` for the exact swaps (DP layers back to their PyTorch originals), so a
    checkpoint loads into the architecture it was built from."""
    for name, child in list(module.named_children()):
        if isinstance(child, DPLSTM | DPGRU | DPRNN | DPMultiheadAttention):
            setattr(module, name, child.to_module())
        else:
            unfix(child)
    return module
