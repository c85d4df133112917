"""DPMultiheadAttention against nn.MultiheadAttention with the same weights: every input layout
and mask kind, outputs, returned weights and gradients, dropout, attributes and errors."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from trustlab.errors import ConfigError
from trustlab.privacy import DPMultiheadAttention, fix

E, HEADS, L, S, N = 8, 2, 4, 5, 3
LAYOUTS = ["unbatched", "batch_first", "seq_first"]


def _pair(layout: str = "batch_first", kdim: int | None = None, vdim: int | None = None,
          bias: bool = True, dropout: float = 0.0, dtype: torch.dtype = torch.float64,
          ) -> tuple[nn.MultiheadAttention, DPMultiheadAttention]:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, HEADS, dropout, bias, kdim=kdim, vdim=vdim,
                                batch_first=layout == "batch_first", dtype=dtype)
    if bias:  # torch zeroes the biases at initialisation: make them count
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha, DPMultiheadAttention.from_module(mha)


def _inputs(layout: str, kdim: int | None = None, vdim: int | None = None,
            dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    def shape(length: int, features: int) -> tuple[int, ...]:
        return {"unbatched": (length, features), "batch_first": (N, length, features),
                "seq_first": (length, N, features)}[layout]
    torch.manual_seed(1)
    return [torch.randn(shape(length, dim or E), dtype=dtype, requires_grad=True)
            for length, dim in ((L, E), (S, kdim), (S, vdim))]


def _attn_mask(kind: str | None, layout: str) -> torch.Tensor | None:
    """A 2-D (L, S) or 3-D (N*H, L, S) bool or float mask; bool masks never mask key 0."""
    if kind is None:
        return None
    batch = 1 if layout == "unbatched" else N
    shape = (L, S) if kind.endswith("2d") else (batch * HEADS, L, S)
    torch.manual_seed(2)
    if kind.startswith("float"):
        return torch.randn(shape, dtype=torch.float64)
    mask = torch.rand(shape) < 0.4
    mask[..., 0] = False
    return mask


def _padding_mask(kind: str | None, layout: str) -> torch.Tensor | None:
    """(N, S) or unbatched (S,) bool or float key padding mask; key 0 is never padded."""
    if kind is None:
        return None
    shape = (S,) if layout == "unbatched" else (N, S)
    torch.manual_seed(3)
    if kind == "float":
        return torch.randn(shape, dtype=torch.float64)
    mask = torch.rand(shape) < 0.4
    mask[..., 0] = False
    return mask


def _torch_grads(mha: nn.MultiheadAttention) -> list[torch.Tensor | None]:
    """nn.MultiheadAttention's parameter gradients in DPMultiheadAttention's order (q, k, v,
    out; weights then biases)."""
    if mha._qkv_same_embed_dim:
        weights = list(mha.in_proj_weight.grad.chunk(3))
    else:
        weights = [mha.q_proj_weight.grad, mha.k_proj_weight.grad, mha.v_proj_weight.grad]
    biases = [None] * 3 if mha.in_proj_bias is None else list(mha.in_proj_bias.grad.chunk(3))
    return weights + [mha.out_proj.weight.grad] + biases + [
        None if mha.out_proj.bias is None else mha.out_proj.bias.grad]


def _dp_grads(dp: DPMultiheadAttention) -> list[torch.Tensor | None]:
    projections = (dp.q_proj, dp.k_proj, dp.v_proj, dp.out_proj)
    return [p.weight.grad for p in projections] + [
        None if p.bias is None else p.bias.grad for p in projections]


def _compare(layout: str, mha: nn.MultiheadAttention, dp: DPMultiheadAttention,
             kdim: int | None = None, vdim: int | None = None, **kwargs) -> None:
    """Same outputs, returned weights, input and parameter gradients, to 1e-6 in float64."""
    results = []
    for module in (mha, dp):
        inputs = _inputs(layout, kdim, vdim)
        out, weights = module(*inputs, **kwargs)
        (out.square().sum() + (0 if weights is None else weights.sum())).backward()
        results.append((out, weights, [x.grad for x in inputs]))
    (want, want_w, want_g), (got, got_w, got_g) = results
    close = dict(rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(got, want, **close)
    torch.testing.assert_close(got_w, want_w, **close)
    torch.testing.assert_close(got_g, want_g, **close)
    torch.testing.assert_close(_dp_grads(dp), _torch_grads(mha), **close)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kdim, vdim", [(None, None), (6, 3)], ids=["same_dims", "kdim_vdim"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)],
                         ids=["averaged_weights", "per_head_weights", "no_weights"])
def test_same_function_as_torch(layout, kdim, vdim, bias, need_weights, average):
    mha, dp = _pair(layout, kdim, vdim, bias)
    _compare(layout, mha, dp, kdim, vdim, need_weights=need_weights,
             average_attn_weights=average)


@pytest.mark.filterwarnings("ignore:Support for mismatched")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attn", [None, "bool2d", "float2d", "bool3d", "float3d"])
@pytest.mark.parametrize("padding", [None, "bool", "float"])
@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no_weights"])
def test_masks_as_torch(layout, attn, padding, need_weights):
    mha, dp = _pair(layout)
    _compare(layout, mha, dp, need_weights=need_weights, attn_mask=_attn_mask(attn, layout),
             key_padding_mask=_padding_mask(padding, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mask", ["causal", "not_causal"])
@pytest.mark.parametrize("padding", [None, "bool"])
@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no_weights"])
def test_is_causal_as_torch(layout, mask, padding, need_weights):
    """is_causal is a hint: torch applies attn_mask when it needs the weights or merges a
    padding mask, and otherwise lets the fused kernel apply its own causal mask (so a wrong
    hint shows: not_causal)."""
    causal = torch.ones(L, S, dtype=torch.bool).triu(1)
    attn_mask = causal if mask == "causal" else ~causal & (torch.arange(S) > 0)
    mha, dp = _pair(layout)
    _compare(layout, mha, dp, attn_mask=attn_mask, is_causal=True, need_weights=need_weights,
             key_padding_mask=_padding_mask(padding, layout))


@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no_weights"])
def test_is_causal_needs_attn_mask_as_in_torch(need_weights):
    mha, dp = _pair()
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        mha(*_inputs("batch_first"), is_causal=True, need_weights=need_weights)
    with pytest.raises(ConfigError, match="is_causal=True .* needs that attn_mask"):
        dp(*_inputs("batch_first"), is_causal=True, need_weights=need_weights)


def test_a_fully_padded_sample_gives_what_torch_gives():
    mha, dp = _pair()
    padding = torch.zeros(N, S, dtype=torch.bool)
    padding[1] = True
    for need_weights in (True, False):
        _compare("batch_first", mha, dp, key_padding_mask=padding, need_weights=need_weights)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no_weights"])
def test_training_dropout_draws_what_torch_draws(layout, need_weights):
    """Same seed, same dropout masks: torch's module and ours consume the generator alike."""
    mha, dp = _pair(layout, dropout=0.5)
    results = []
    for module in (mha, dp):
        torch.manual_seed(4)
        results.append(module(*_inputs(layout)[:3], need_weights=need_weights))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-6)


def test_returned_weights_are_the_dropped_out_ones_that_mixed_the_values():
    """torch returns the attention weights after dropout: zeros where dropped, the rest scaled
    by 1 / (1 - p), and the output is exactly those weights applied to the values."""
    _, dp = _pair(dropout=0.5)
    query, key, value = _inputs("batch_first")
    torch.manual_seed(5)
    out, weights = dp(query, key, value, average_attn_weights=False)
    assert (weights == 0).any()
    row_sums = weights.sum(-1)
    assert (row_sums - 1).abs().max() > 1e-3  # not rows of a softmax any more
    v = dp.v_proj(value).unflatten(-1, (HEADS, E // HEADS)).transpose(1, 2)
    mixed = (weights @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(out, dp.out_proj(mixed), rtol=1e-9, atol=1e-9)
    dp.eval()
    _, clean = dp(query, key, value, average_attn_weights=False)
    kept = weights != 0
    torch.testing.assert_close(weights[kept], clean[kept] * 2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad_fast_path"])
@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no_weights"])
@pytest.mark.parametrize("padding", [None, "bool"])
def test_eval_mode_as_torch(grad, need_weights, padding):
    """Eval self-attention, batch first, without grad: torch's fused fast path."""
    mha, dp = _pair(dropout=0.5)
    mha.eval(), dp.eval()
    x = _inputs("batch_first")[0].detach()
    mask = None if padding is None else _padding_mask(padding, "batch_first")[:, :L]
    with torch.set_grad_enabled(grad):
        want = mha(x, x, x, key_padding_mask=mask, need_weights=need_weights)
        got = dp(x, x, x, key_padding_mask=mask, need_weights=need_weights)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_float32_as_torch():
    mha, dp = _pair("seq_first", dtype=torch.float32)
    inputs = [x.float() for x in _inputs("seq_first")]
    torch.testing.assert_close(dp(*inputs), mha(*inputs))


def test_attributes_and_signatures_are_torch_s():
    mha = nn.MultiheadAttention(E, HEADS, 0.25, False, kdim=6, vdim=3, batch_first=True)
    dp = DPMultiheadAttention.from_module(mha)
    public = {name for name in set(dir(mha)) - set(dir(nn.Module())) if not name.startswith("__")}
    assert public - {"merge_masks"} <= set(dir(dp))  # merge_masks: torch's fused path only
    for name in sorted(vars(mha)):
        if not name.startswith("_") and name != "training":
            assert getattr(dp, name) == getattr(mha, name), name
    for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        torch.testing.assert_close(getattr(dp, name), getattr(mha, name))
    assert dp._qkv_same_embed_dim is False and dp.in_proj_weight is None
    assert dp.in_proj_bias is None
    for method in ("__init__", "forward"):
        ours = inspect.signature(getattr(DPMultiheadAttention, method)).parameters
        theirs = inspect.signature(getattr(nn.MultiheadAttention, method)).parameters
        assert [(p.name, p.default) for p in ours.values()] == \
            [(p.name, p.default) for p in theirs.values()]


def test_positional_arguments_and_factory_kwargs_are_torch_s():
    dp = DPMultiheadAttention(E, HEADS, 0.1, False, False, False, 6, 3, True,
                              dtype=torch.float64)
    assert (dp.kdim, dp.vdim, dp.batch_first, dp.dropout) == (6, 3, True, 0.1)
    assert dp.k_proj.in_features == 6 and dp.v_proj.in_features == 3
    assert all(p.dtype == torch.float64 for p in dp.parameters())
    assert dp.q_proj.bias is None and dp.out_proj.bias is None


@pytest.mark.parametrize("kdim", [None, 6])
def test_initialisation_is_torch_s(kdim):
    """Xavier-uniform projections (the packed (3E, E) bound when the dims agree), zero biases:
    the default nn.Linear initialisation has a smaller spread and random biases."""
    width = 96
    torch.manual_seed(6)
    mha = nn.MultiheadAttention(width, 4, kdim=kdim)
    dp = DPMultiheadAttention(width, 4, kdim=kdim)
    theirs = mha.in_proj_weight.chunk(3) if kdim is None else (
        mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    for ours, want in zip((dp.q_proj.weight, dp.k_proj.weight, dp.v_proj.weight), theirs):
        bound = want.abs().max().item()
        assert ours.abs().max() <= bound * 1.01 and ours.abs().max() > bound * 0.95
        assert abs(ours.std().item() / want.std().item() - 1) < 0.1
    for proj in (dp.q_proj, dp.k_proj, dp.v_proj, dp.out_proj):
        assert not proj.bias.any()


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_options_without_a_dp_equivalent_are_refused(option):
    with pytest.raises(ConfigError, match="add_bias_kv and add_zero_attn have no DP"):
        DPMultiheadAttention(E, HEADS, **{option: True})
    with pytest.raises(ConfigError, match="add_bias_kv and add_zero_attn have no DP"):
        DPMultiheadAttention.from_module(nn.MultiheadAttention(E, HEADS, **{option: True}))


@pytest.mark.parametrize("embed_dim, num_heads", [(8, 3), (0, 2), (8, 0)])
def test_bad_sizes_are_refused(embed_dim, num_heads):
    with pytest.raises(Exception):
        nn.MultiheadAttention(embed_dim, num_heads)
    with pytest.raises(ConfigError, match="num_heads"):
        DPMultiheadAttention(embed_dim, num_heads)


def _bad_inputs() -> dict[str, tuple[str, dict]]:
    """Inputs torch refuses (batch_first) -> (the argument our error names, forward kwargs)."""
    q, k, v = (x.detach() for x in _inputs("batch_first"))
    return {
        "4d_query": ("query", dict(query=q[None], key=k, value=v)),
        "unbatched_key": ("query, key and value", dict(query=q, key=k[0], value=v)),
        "query_width": ("query", dict(query=q[..., :-1], key=k, value=v)),
        "key_width": ("key", dict(query=q, key=k[..., :-1], value=v)),
        "value_length": ("value", dict(query=q, key=k, value=v[:, :-1])),
        "key_batch": ("key", dict(query=q, key=k[:-1], value=v[:-1])),
        "padding_shape": ("key_padding_mask", dict(query=q, key=k, value=v,
                                                   key_padding_mask=torch.zeros(N, S + 1) > 0)),
        "padding_1d": ("key_padding_mask", dict(query=q, key=k, value=v,
                                                key_padding_mask=torch.zeros(S) > 0)),
        "padding_int": ("key_padding_mask", dict(query=q, key=k, value=v,
                                                 key_padding_mask=torch.zeros(N, S).long())),
        "attn_2d_shape": ("attn_mask", dict(query=q, key=k, value=v,
                                            attn_mask=torch.zeros(S, L) > 0)),
        "attn_3d_shape": ("attn_mask", dict(query=q, key=k, value=v,
                                            attn_mask=torch.zeros(N, L, S) > 0)),
        "attn_4d": ("attn_mask", dict(query=q, key=k, value=v,
                                      attn_mask=torch.zeros(1, 1, L, S) > 0)),
        "attn_int": ("attn_mask", dict(query=q, key=k, value=v,
                                       attn_mask=torch.zeros(L, S).int())),
        "causal_attn_int": ("attn_mask", dict(query=q, key=k, value=v, need_weights=False,
                                              attn_mask=torch.zeros(L, S).int(), is_causal=True)),
        "unbatched_attn_3d": ("attn_mask", dict(query=q[0], key=k[0], value=v[0],
                                                attn_mask=torch.zeros(N * HEADS, L, S) > 0)),
        "unbatched_padding_2d": ("key_padding_mask", dict(query=q[0], key=k[0], value=v[0],
                                                          key_padding_mask=torch.zeros(1, S) > 0)),
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_inputs_torch_refuses_are_refused_naming_the_argument(case):
    name, kwargs = _bad_inputs()[case]
    mha, dp = _pair()
    with pytest.raises(Exception):
        mha(**kwargs)
    with pytest.raises(ConfigError, match=rf"^{name}"):
        dp(**kwargs)


def test_round_trip_through_torch_keeps_the_function():
    mha, dp = _pair(kdim=6, vdim=3, bias=False)
    back = dp.to_module()
    assert (back.kdim, back.vdim, back.batch_first) == (6, 3, True)
    inputs = _inputs("batch_first", 6, 3)
    torch.testing.assert_close(back(*inputs), mha(*inputs))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_a_fixed_causal_encoder_layer_matches_torch(train):
    """nn.TransformerEncoderLayer hands its self-attention a causal mask with is_causal=True."""
    torch.manual_seed(7)
    layer = nn.TransformerEncoderLayer(E, HEADS, 16, dropout=0.0, batch_first=True).double()
    layer.train(train)
    fixed = fix(layer)
    assert isinstance(fixed.self_attn, DPMultiheadAttention)
    x = _inputs("batch_first")[0]
    mask = nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    torch.testing.assert_close(fixed(x, src_mask=mask, is_causal=True),
                               layer(x, src_mask=mask, is_causal=True), rtol=1e-6, atol=1e-6)
