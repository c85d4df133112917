"""One interface over Captum: a registry of attribution methods and the ``Explainer`` that runs them.

Every method registers with ``@register_method`` (name, kind, which models it applies to, its
Captum defaults). ``Explainer(model, "IntegratedGradients").attribute(inputs, target=...,
baselines=...)`` keeps Captum's argument names, batches the inputs so memory stays bounded, and
returns attributions shaped like ``inputs``. A method that does not apply to a model raises a
``ConfigError`` naming the methods that do; a model without gradients gets the perturbation
methods only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from captum.attr import (DeepLift, GradientShap, InputXGradient, IntegratedGradients,
                         KernelShap, LayerAttribution, LayerGradCam, Lime, NoiseTunnel, Occlusion,
                         Saliency)
from torch import nn

from trustlab.errors import ConfigError
from trustlab.train.zoo import SelfAttention

GRADIENT, PERTURBATION, ATTENTION = "gradient", "perturbation", "attention"


@dataclass(frozen=True)
class ModelFacts:
    """What decides which methods apply: the arch (zoo name or None), modality, differentiability."""

    arch: str | None
    modality: str
    differentiable: bool
    has_attention: bool
    has_recurrence: bool
    has_conv: bool


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: how to build its Captum object and where it applies.

    ``build(model, facts)`` returns an object with Captum's ``attribute``; ``defaults`` are the
    ``attribute`` keyword defaults per modality (``"any"`` for both); ``batch_kw`` names the
    Captum argument that bounds memory inside one call (``internal_batch_size`` …).
    """

    name: str
    kind: str
    build: Callable[[nn.Module, ModelFacts], Any]
    applies: Callable[[ModelFacts], bool]
    requirement: str  # why it may not apply, for the error message
    defaults: dict = field(default_factory=dict)
    batch_kw: str | None = None
    uses_baselines: bool = True
    stochastic: bool = False

    def applies_to(self, facts: ModelFacts) -> bool:
        if self.kind == GRADIENT and not facts.differentiable:
            return False
        return self.applies(facts)

    def attribute_defaults(self, modality: str) -> dict:
        return {**self.defaults.get("any", {}), **self.defaults.get(modality, {})}


_METHODS: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo) -> MethodInfo:
    """Add ``info`` to the registry (a new method is one call)."""
    _METHODS[info.name] = info
    return info


def available_methods() -> list[str]:
    return list(_METHODS)


def method_info(name: str) -> MethodInfo:
    if name not in _METHODS:
        raise ConfigError(f"unknown attribution method {name!r}; available: "
                          f"{', '.join(_METHODS)}")
    return _METHODS[name]


def model_facts(model: nn.Module, inputs: torch.Tensor, *, arch: str | None = None,
                modality: str | None = None) -> ModelFacts:
    """Inspect ``model`` once: module families present and whether its output has gradients."""
    modality = modality or ("image" if inputs.dim() == 4 else "tabular")
    with torch.enable_grad():
        probe = inputs[:1].detach().clone().requires_grad_(True)
        output = model(probe)
    modules = list(model.modules())
    return ModelFacts(
        arch=arch, modality=modality,
        differentiable=isinstance(output, torch.Tensor) and output.grad_fn is not None,
        has_attention=any(isinstance(m, SelfAttention) for m in modules),
        has_recurrence=any(isinstance(m, nn.RNNBase) for m in modules),
        has_conv=any(isinstance(m, nn.Conv2d) for m in modules))


def methods_for(facts: ModelFacts) -> list[str]:
    """Names of the registered methods that apply to a model with these facts."""
    return [name for name, info in _METHODS.items() if info.applies_to(facts)]


class Explainer:
    """``Explainer(model, method).attribute(inputs, target=..., baselines=...)`` for any method.

    ``model`` must be in eval mode (use ``Subject.clean_model()``). ``target=None`` explains the
    predicted class. ``batch_size`` bounds how many inputs go through one Captum call; the
    method's own memory knob (``internal_batch_size`` for IG) defaults to it.
    """

    def __init__(self, model: nn.Module, method: str, *, arch: str | None = None,
                 modality: str | None = None, facts: ModelFacts | None = None) -> None:
        if model.training:
            raise ConfigError("the model is in training mode: attributions need eval mode "
                              "(call model.eval() or use Subject.clean_model())")
        self.model = model
        self.info = method_info(method)
        self._arch, self._modality, self.facts = arch, modality, facts
        self._captum: Any = None

    def _ensure(self, inputs: torch.Tensor) -> None:
        if self.facts is None:
            self.facts = model_facts(self.model, inputs, arch=self._arch, modality=self._modality)
        if not self.info.applies_to(self.facts):
            why = ("the model has no gradients" if self.info.kind == GRADIENT and
                   not self.facts.differentiable else self.info.requirement)
            raise ConfigError(f"{self.info.name} does not apply to "
                              f"{self.facts.arch or type(self.model).__name__} ({why}); "
                              f"methods that do: {', '.join(methods_for(self.facts))}")
        if self._captum is None:
            self._captum = self.info.build(self.model, self.facts)

    def attribute(self, inputs: torch.Tensor, target: int | torch.Tensor | None = None,
                  baselines: torch.Tensor | float | None = None, *, batch_size: int = 128,
                  **kwargs: Any) -> torch.Tensor:
        """Attributions shaped like ``inputs``; ``kwargs`` go to Captum's ``attribute``."""
        inputs = _check_inputs(inputs)
        self._ensure(inputs)
        target = predicted_target(self.model, inputs) if target is None else target
        target = _expand(torch.as_tensor(target), len(inputs), "target")
        options = {**self.info.attribute_defaults(self.facts.modality), **kwargs}
        if self.info.batch_kw and self.info.batch_kw not in options:
            options[self.info.batch_kw] = batch_size
        chunks = []
        for start in range(0, len(inputs), batch_size):
            part = slice(start, start + batch_size)
            call = dict(options, target=target[part])
            if self.info.uses_baselines and baselines is not None:
                call["baselines"] = _slice_baselines(baselines, part, len(inputs))
            chunk = inputs[part]
            if self.info.kind == GRADIENT and chunk.is_floating_point():
                chunk = chunk.detach().requires_grad_()  # what Captum would set, with a warning
            chunks.append(self._captum.attribute(chunk, **call).detach())
        return torch.cat(chunks)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global generators (Captum samples from both: GradientShap picks
    baselines with numpy), restoring both afterwards."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def predicted_target(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's predicted class per input (what ``target=None`` explains)."""
    with torch.no_grad():
        return model(inputs).argmax(dim=1)


def _check_inputs(inputs: Any) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        raise ConfigError(f"inputs must be a torch.Tensor, got {type(inputs).__name__} "
                          "(use torch.from_numpy(X))")
    if inputs.dim() < 2 or len(inputs) == 0:
        raise ConfigError(f"inputs must be a non-empty batch (N, ...), got shape "
                          f"{tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise ConfigError(f"inputs must be floating point, got {inputs.dtype}")
    return inputs


def _expand(target: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if target.dim() == 0:
        return target.expand(n)
    if len(target) != n:
        raise ConfigError(f"{name} has {len(target)} entries for {n} inputs: give one per input "
                          "or a single int")
    return target


def _slice_baselines(baselines: torch.Tensor | float, part: slice, n: int) -> torch.Tensor | float:
    """Per-input baselines are sliced with the inputs; a single row or a distribution is kept."""
    if isinstance(baselines, torch.Tensor) and baselines.dim() > 0 and len(baselines) == n > 1:
        return baselines[part]
    return baselines


# --- the registry ------------------------------------------------------------------------------

def _any(facts: ModelFacts) -> bool:
    return True


def _feedforward_relu(facts: ModelFacts) -> bool:
    return not (facts.has_attention or facts.has_recurrence)


class GradCam:
    """LayerGradCam on the last convolutional stage (``model.features``), upsampled to the input."""

    def __init__(self, model: nn.Module) -> None:
        self.layer_method = LayerGradCam(model, model.features)

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        cam = self.layer_method.attribute(inputs, target=target, **kwargs)
        return LayerAttribution.interpolate(cam, tuple(inputs.shape[2:]), "bilinear").expand_as(
            inputs)


register_method(MethodInfo("Saliency", GRADIENT, lambda m, f: Saliency(m), _any, "",
                           defaults={"any": {"abs": True}}, uses_baselines=False))
register_method(MethodInfo("InputXGradient", GRADIENT, lambda m, f: InputXGradient(m), _any, "",
                           uses_baselines=False))
register_method(MethodInfo("IntegratedGradients", GRADIENT,
                           lambda m, f: IntegratedGradients(m), _any, "",
                           defaults={"any": {"n_steps": 50}}, batch_kw="internal_batch_size"))
register_method(MethodInfo("SmoothGrad", GRADIENT, lambda m, f: NoiseTunnel(Saliency(m)), _any,
                           "", defaults={"any": {"nt_type": "smoothgrad", "nt_samples": 16,
                                                 "stdevs": 0.15}},
                           batch_kw="nt_samples_batch_size", uses_baselines=False,
                           stochastic=True))
register_method(MethodInfo("DeepLift", GRADIENT, lambda m, f: DeepLift(m), _feedforward_relu,
                           "DeepLift's rescale rule needs a feed-forward ReLU net, not attention "
                           "or recurrent cells"))
register_method(MethodInfo("GradientShap", GRADIENT, lambda m, f: GradientShap(m), _any, "",
                           defaults={"any": {"n_samples": 16, "stdevs": 0.0}}, stochastic=True))
register_method(MethodInfo("LayerGradCam", GRADIENT, lambda m, f: GradCam(m),
                           lambda f: f.has_conv and f.modality == "image",
                           "GradCAM needs a convolutional image model with a `features` stage",
                           uses_baselines=False))
register_method(MethodInfo("Occlusion", PERTURBATION, lambda m, f: Occlusion(m), _any, "",
                           defaults={"image": {"sliding_window_shapes": (1, 2, 2),
                                               "strides": (1, 1, 1)},
                                     "tabular": {"sliding_window_shapes": (1,)}},
                           batch_kw="perturbations_per_eval"))
register_method(MethodInfo("KernelShap", PERTURBATION, lambda m, f: KernelShap(m),
                           lambda f: f.modality == "tabular", "KernelShap is offered for tabular "
                           "data (pass feature_mask to fold one-hot columns)",
                           defaults={"any": {"n_samples": 100}}, batch_kw="perturbations_per_eval",
                           stochastic=True))
register_method(MethodInfo("Lime", PERTURBATION, lambda m, f: Lime(m),
                           lambda f: f.modality == "tabular", "Lime is offered for tabular data",
                           defaults={"any": {"n_samples": 100}}, batch_kw="perturbations_per_eval",
                           stochastic=True))
