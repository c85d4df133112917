"""fix / unfix: frozen parameters, shared layers, the root, refusals that change nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustlab.errors import ConfigError
from trustlab.privacy import DPLSTM, DPMultiheadAttention, fix, unfix, validate


def _trainable(module: nn.Module) -> list[bool]:
    return [p.requires_grad for p in module.parameters()]


@pytest.mark.parametrize("make", [lambda: nn.LSTM(3, 4, num_layers=2),
                                  lambda: nn.MultiheadAttention(8, 2),
                                  lambda: nn.BatchNorm1d(6)],
                         ids=["lstm", "attention", "batch_norm"])
def test_frozen_layers_stay_frozen_through_fix_and_unfix(make):
    """Fine-tuning a head on a frozen backbone: fix used to make every swapped parameter
    trainable again."""
    model = nn.Sequential(make(), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    fixed = fix(model)
    assert not any(_trainable(fixed[0])) and all(_trainable(fixed[1]))
    if isinstance(fixed[0], DPLSTM | DPMultiheadAttention):
        assert not any(_trainable(unfix(fixed)[0]))


def test_a_layer_registered_twice_gets_one_replacement():
    """Shared layers stay shared: fix used to swap the first registration only (and each
    further fix made another copy, untying the weights)."""
    attention, lstm = nn.MultiheadAttention(8, 2), nn.LSTM(3, 4)
    model = nn.ModuleDict({"blocks": nn.ModuleList([attention] * 3),
                           "left": lstm, "right": lstm})
    fixed = fix(model)
    blocks = list(fixed["blocks"])
    assert isinstance(blocks[0], DPMultiheadAttention) and all(b is blocks[0] for b in blocks)
    assert isinstance(fixed["left"], DPLSTM) and fixed["left"] is fixed["right"]
    validate(fixed)
    back = unfix(fixed)
    assert type(back["left"]) is nn.LSTM and back["left"] is back["right"]


def test_fix_and_unfix_of_a_fixable_root_return_its_replacement():
    lstm = nn.LSTM(3, 4)
    fixed = fix(lstm)
    assert isinstance(fixed, DPLSTM)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(fixed(x)[0], lstm(x)[0])
    assert type(unfix(fixed)) is nn.LSTM


@pytest.mark.parametrize("unfixable, option", [
    (lambda: nn.LSTM(3, 4, proj_size=2), "proj_size"),
    (lambda: nn.MultiheadAttention(8, 2, add_zero_attn=True), "add_bias_kv or add_zero_attn"),
])
def test_an_option_with_no_dp_equivalent_is_refused_and_nothing_is_swapped(unfixable, option):
    """validate names the option instead of promising that fix swaps the layer; fix refuses
    before swapping anything (it used to leave the model half swapped)."""
    model = nn.Sequential(nn.LSTM(3, 4), unfixable())
    with pytest.raises(ConfigError, match=rf"1 \(\w+\): .*build it without {option}"):
        validate(model)
    with pytest.raises(ConfigError, match=rf"1 \(\w+\): {option}"):
        fix(model)
    assert type(model[0]) is nn.LSTM


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_a_fixed_transformer_encoder_runs_its_padded_inference():
    """The encoder's nested-tensor fast path (set at construction for nn.MultiheadAttention)
    handed DPMultiheadAttention a nested tensor: eval with a padding mask crashed."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    x, padding = torch.randn(3, 5, 8), torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    with torch.no_grad():
        want = encoder(x, src_key_padding_mask=padding)
        got = fix(encoder)(x, src_key_padding_mask=padding)
    torch.testing.assert_close(got[~padding], want[~padding], rtol=1e-5, atol=1e-5)


def test_batch_norm_becomes_group_norm_with_its_eps():
    norm = fix(nn.Sequential(nn.BatchNorm2d(6, eps=1e-3)))[0]
    assert isinstance(norm, nn.GroupNorm) and norm.eps == 1e-3 and norm.num_channels == 6


@pytest.mark.parametrize("enable_nested_tensor", [True, False])
def test_unfix_gives_an_encoder_its_nested_tensor_fast_path_back(enable_nested_tensor):
    """fix turns the encoder's nested-tensor path off (it needs nn.MultiheadAttention); unfix
    used to leave it off, so the restored model ran slower than the one it was built from."""
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=enable_nested_tensor)
    before = encoder.use_nested_tensor
    assert before == enable_nested_tensor
    fixed = fix(encoder)
    assert fixed.use_nested_tensor is False
    restored = unfix(fixed)
    assert restored.use_nested_tensor == before
    assert not any(hasattr(m, "_trustlab_nested_tensor_off") for m in restored.modules())
