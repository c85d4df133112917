"""The Explainer adds no error over Captum, and says clearly what does not apply."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import DeepLift, GradientShap, IntegratedGradients, Occlusion, Saliency
from torch import nn

from trustlab.errors import ConfigError
from trustlab.explain import Explainer, methods_for, model_facts, predicted_target
from trustlab.explain.methods import seeded


@pytest.fixture(scope="module")
def cnn_batch(digits_cnn):
    model = digits_cnn.clean_model()
    inputs = torch.from_numpy(digits_cnn.split("test").X[:10])
    return model, inputs, predicted_target(model, inputs)


@pytest.mark.parametrize("method, direct, kwargs", [
    ("Saliency", lambda m: Saliency(m), {"abs": True}),
    ("IntegratedGradients", lambda m: IntegratedGradients(m), {"n_steps": 20}),
    ("DeepLift", lambda m: DeepLift(m), {}),
    ("Occlusion", lambda m: Occlusion(m), {"sliding_window_shapes": (1, 2, 2),
                                           "strides": (1, 1, 1)}),
])
def test_wrapper_equals_captum(cnn_batch, method, direct, kwargs):
    model, inputs, target = cnn_batch
    ours = Explainer(model, method).attribute(inputs, target, batch_size=4, **kwargs)
    theirs = direct(model).attribute(inputs, target=target, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["Saliency", "InputXGradient"])
def test_gradient_methods_leave_inputs_alone_without_captum_warnings(cnn_batch, method):
    """Captum sets requires_grad on inputs that lack it, with a warning per call (nine lines
    in one demo run); the wrapper hands it a copy that requires gradients instead."""
    model, inputs, target = cnn_batch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Explainer(model, method).attribute(inputs, target, batch_size=4)
    assert not [w for w in caught if "require gradients" in str(w.message)]
    assert not inputs.requires_grad


def test_stochastic_wrapper_equals_captum_under_the_same_seed(cnn_batch):
    model, inputs, target = cnn_batch
    background = torch.zeros(4, *inputs.shape[1:])
    with seeded(3):  # GradientShap draws from torch and numpy
        ours = Explainer(model, "GradientShap").attribute(inputs, target, baselines=background)
    with seeded(3):
        theirs = GradientShap(model).attribute(inputs, baselines=background, target=target,
                                               n_samples=16, stdevs=0.0)
    torch.testing.assert_close(ours, theirs)


def test_target_none_explains_the_predicted_class(cnn_batch):
    model, inputs, target = cnn_batch
    torch.testing.assert_close(Explainer(model, "Saliency").attribute(inputs),
                               Explainer(model, "Saliency").attribute(inputs, target))


def test_gradcam_on_an_mlp_names_the_methods_that_apply(small_model):
    model, inputs = small_model("mlp")
    with pytest.raises(ConfigError, match="LayerGradCam does not apply.*IntegratedGradients"):
        Explainer(model, "LayerGradCam").attribute(inputs)


def test_applicability_by_architecture(small_model):
    expected = {"cnn": {"LayerGradCam", "DeepLift"}, "vit": {"AttentionRollout"},
                "ft_transformer": {"AttentionRollout", "KernelShap", "Lime"}}
    absent = {"cnn": {"AttentionRollout", "KernelShap"}, "lstm": {"DeepLift", "LayerGradCam",
                                                                   "AttentionRollout"},
              "mlp": {"LayerGradCam", "AttentionRollout"}}
    for arch in set(expected) | set(absent):
        model, inputs = small_model(arch)
        names = set(methods_for(model_facts(model, inputs, arch=arch)))
        assert expected.get(arch, set()) <= names, arch
        assert not absent.get(arch, set()) & names, arch


class _Thresholded(nn.Module):
    """A non-differentiable model: a step function of a linear score."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.sum(dim=1, keepdim=True) > 3).float()
        return torch.cat([1 - score, score], dim=1)


def test_non_differentiable_model_falls_back_to_perturbation_methods():
    model = _Thresholded().eval()
    inputs = torch.rand(5, 6)
    facts = model_facts(model, inputs)
    assert not facts.differentiable
    assert set(methods_for(facts)) == {"Occlusion", "KernelShap", "Lime"}
    with pytest.raises(ConfigError, match="no gradients.*Occlusion"):
        Explainer(model, "Saliency").attribute(inputs)
    assert Explainer(model, "Occlusion").attribute(inputs, 1).shape == inputs.shape


@pytest.mark.parametrize("call, message", [
    (lambda m, x: Explainer(m, "Nope"), "unknown attribution method 'Nope'; available"),
    (lambda m, x: Explainer(m, "Saliency").attribute(x.numpy()), "torch.Tensor"),
    (lambda m, x: Explainer(m, "Saliency").attribute(x[0]), "non-empty batch"),
    (lambda m, x: Explainer(m, "Saliency").attribute(x, torch.tensor([0, 1])), "2 entries for 12"),
    (lambda m, x: Explainer(m.train(), "Saliency"), "training mode"),
])
def test_bad_input_messages(call, message, small_model):
    model, inputs = small_model("mlp")
    with pytest.raises(ConfigError, match=message):
        call(model, inputs)


def test_attention_rollout_matches_a_naive_reference(small_model):
    model, inputs = small_model("vit")
    ours = Explainer(model, "AttentionRollout").attribute(inputs)
    layers = [m for m in model.modules() if hasattr(m, "keep_attention")]
    for layer in layers:
        layer.keep_attention = True
    model(inputs)
    for i in range(len(inputs)):
        joint = np.eye(layers[0].last_attention.shape[-1])
        for layer in layers:
            a = layer.last_attention[i].mean(dim=0).double().numpy()
            a = 0.5 * np.eye(len(a)) + 0.5 * a
            joint = (a / a.sum(axis=1, keepdims=True)) @ joint
        tokens = joint[0, 1:].reshape(4, 4)  # 8x8 image, 2x2 patches
        pixels = np.kron(tokens, np.ones((2, 2))) / 4
        np.testing.assert_allclose(ours[i, 0].numpy(), pixels, rtol=1e-4, atol=1e-7)
