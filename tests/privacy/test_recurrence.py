"""The fused DP recurrence (hand-written BPTT) against PyTorch's nn.LSTM / nn.GRU / nn.RNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dp_reference import float64_default  # noqa: F401
from trustlab.errors import ConfigError
from trustlab.privacy import DPGRU, DPLSTM, DPRNN, fix, unfix
from trustlab.privacy.tracker import GradSampleTracker


@pytest.mark.parametrize("bidirectional, bias", [(False, True), (True, True), (False, False)])
@pytest.mark.parametrize("dp_cls, torch_cls, settings", [
    (DPLSTM, nn.LSTM, {}), (DPGRU, nn.GRU, {}), (DPRNN, nn.RNN, {"nonlinearity": "tanh"}),
    (DPRNN, nn.RNN, {"nonlinearity": "relu"})])
def test_tapped_recurrence_matches_torch(dp_cls, torch_cls, settings, bidirectional, bias):
    """Outputs, final states and the gradients of input, h0 and c0 equal PyTorch's fused RNN
    while the engine taps the DP layer (the path that runs the hand-written BPTT)."""
    torch.manual_seed(1)
    ref = torch_cls(3, 5, num_layers=2, bias=bias, batch_first=True, bidirectional=bidirectional,
                    **settings)
    dp = dp_cls.from_module(ref)
    tracker = GradSampleTracker(dp, max_grad_norm=1.0, loss_reduction="sum")
    tracker.attach()
    x = torch.randn(4, 7, 3, requires_grad=True)
    h0 = torch.randn(2 * (2 if bidirectional else 1), 4, 5, requires_grad=True)
    c0 = torch.randn_like(h0, requires_grad=True)
    hx = (h0, c0) if dp_cls is DPLSTM else h0
    inputs = (x, h0, c0) if dp_cls is DPLSTM else (x, h0)

    def objective(out: torch.Tensor, state) -> torch.Tensor:  # uses every output
        states = state if isinstance(state, tuple) else (state,)
        return out.sin().sum() + sum((s * s.cos()).sum() for s in states)

    got_out, got_state = dp(x, hx)
    want_out, want_state = ref(x, hx)
    torch.testing.assert_close(got_out, want_out, rtol=1e-10, atol=1e-12)
    want = torch.autograd.grad(objective(want_out, want_state), inputs)
    objective(got_out, got_state).backward()  # a training pass: the engine records it
    for t, w in zip(inputs, want):
        torch.testing.assert_close(t.grad, w, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in dp.parameters())  # weights: book-keeping only
    tracker.flush()
    assert {p for p in tracker.summed} == set(dp.parameters())


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_fix_and_unfix_keep_the_function(nonlinearity):
    """``fix`` swaps nn.RNN for DPRNN (untapped: unrolled in autograd) and ``unfix`` swaps it
    back, nonlinearity and weights kept: all three compute the same outputs."""
    torch.manual_seed(2)
    ref = nn.RNN(3, 4, num_layers=2, nonlinearity=nonlinearity, bidirectional=True)
    x = torch.randn(6, 2, 3)  # (T, B, input): batch_first=False
    fixed = fix(nn.Sequential(ref))[0]
    assert isinstance(fixed, DPRNN) and fixed.nonlinearity == nonlinearity
    back = unfix(nn.Sequential(fixed))[0]
    assert type(back) is nn.RNN and back.nonlinearity == nonlinearity
    want_out, want_h = ref(x)
    for model in (fixed, back):
        out, h = model(x)
        torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h, want_h, rtol=1e-10, atol=1e-12)


def test_rnn_refuses_an_unknown_nonlinearity():
    with pytest.raises(ConfigError, match="nonlinearity must be 'tanh' or 'relu'"):
        DPRNN(3, 4, nonlinearity="sigmoid")
