"""DPLSTM / DPGRU / DPRNN on PackedSequence inputs: PyTorch's results, exact per-sample clipping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence, pack_sequence,
                                pad_packed_sequence)
from torch.utils.data import DataLoader, TensorDataset

import dp_reference
from dp_reference import float64_default, reference_clipped_sum  # noqa: F401
from test_engine import check
from trustlab.privacy import DPGRU, DPLSTM, DPRNN, make_private
from trustlab.privacy.tracker import GradSampleTracker

RNNS = [(DPLSTM, nn.LSTM, {}), (DPGRU, nn.GRU, {}), (DPRNN, nn.RNN, {"nonlinearity": "tanh"}),
        (DPRNN, nn.RNN, {"nonlinearity": "relu"})]
LENGTHS = [3, 5, 1, 5, 2]  # ties: the packed order must follow the input's sorted_indices


def packed_batch(enforce_sorted: bool, lengths: list[int] = LENGTHS, features: int = 3
                 ) -> PackedSequence:
    """A packed batch of random sequences (sorted by length when ``enforce_sorted``) whose
    data is a leaf that requires grad."""
    if enforce_sorted:
        lengths = sorted(lengths, reverse=True)
    x = torch.randn(len(lengths), max(lengths), features)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True,
                                  enforce_sorted=enforce_sorted)
    return PackedSequence(packed.data.requires_grad_(), packed.batch_sizes,
                          packed.sorted_indices, packed.unsorted_indices)


def looped_per_sample_grads(model: nn.Module, x: PackedSequence, y: Tensor, loss_fn
                            ) -> dict[str, Tensor]:
    """Each sample's gradient from a pass of that sample alone, unpadded: the naive reference
    for packed inputs (vmap cannot pack, lengths must be known)."""
    padded, lengths = pad_packed_sequence(x, batch_first=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = [torch.autograd.grad(loss_fn(model(pack_sequence([padded[i, :n].detach()])),
                                         y[i:i + 1]), list(params.values()))
             for i, n in enumerate(lengths.tolist())]
    return {name: torch.stack(g) for name, g in zip(params, zip(*grads))}


@pytest.fixture
def looped_reference(monkeypatch):
    monkeypatch.setattr(dp_reference, "per_sample_grads", looped_per_sample_grads)


class Classifier(nn.Module):
    """A recurrent net over a packed batch (or padded + lengths, packed here) and a Linear
    head on the last layer's final states (``readout="state"``, c_n included for the LSTM) or
    on the mean of the unpacked output over each sequence's valid steps (``"output"``)."""

    def __init__(self, rnn: nn.Module, readout: str, classes: int = 3) -> None:
        super().__init__()
        self.rnn, self.readout = rnn, readout
        states = 2 if isinstance(rnn, DPLSTM) and readout == "state" else 1
        self.head = nn.Linear(rnn.hidden_size * rnn.directions * states, classes)

    def forward(self, x: Tensor | PackedSequence, lengths: Tensor | None = None) -> Tensor:
        if lengths is not None:
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(x)
        if self.readout == "output":
            padded, lengths = pad_packed_sequence(out, batch_first=True)
            return self.head(padded.sum(1) / lengths[:, None].to(padded))
        last = [s[-self.rnn.directions:].transpose(0, 1).flatten(1)
                for s in (state if isinstance(state, tuple) else (state,))]
        return self.head(torch.cat(last, 1))


def _weight_grads(dp: nn.Module, ref: nn.RNNBase) -> list[tuple[Tensor, Tensor]]:
    """(DP layer's gradient, PyTorch's) for every weight and bias."""
    pairs = []
    for index, cell in enumerate(dp.cells):
        layer, direction = divmod(index, dp.directions)
        suffix = f"l{layer}" + ("_reverse" if direction else "")
        for kind, linear in (("ih", cell.ih), ("hh", cell.hh)):
            for name, param in linear.named_parameters():
                pairs.append((param.grad, getattr(ref, f"{name}_{kind}_{suffix}").grad))
    return pairs


@pytest.mark.parametrize("tapped", [False, True], ids=["autograd", "tapped"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("num_layers, bidirectional, bias, batch_first, dropout", [
    (1, False, True, True, 0.0), (1, True, True, False, 0.0), (2, True, True, False, 0.0),
    (2, True, False, True, 0.0), (2, False, True, True, 1.0)])
@pytest.mark.parametrize("dp_cls, torch_cls, settings", RNNS,
                         ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_packed_input_matches_torch(dp_cls, torch_cls, settings, num_layers, bidirectional, bias,
                                    batch_first, dropout, enforce_sorted, tapped):
    """The packed output (data and indices), h_n (c_n) and the gradients of the input, h0, c0
    and (untapped) weights equal PyTorch's, hx given in the original batch order. Tapped, the
    layer is the tracker's root and gets (packed, hx): its batch is the packed one, not h0's
    dim 0. Dropout 1.0 (train mode) zeroes the input of layer 2 in both."""
    torch.manual_seed(1)
    ref = torch_cls(3, 4, num_layers=num_layers, bias=bias, batch_first=batch_first,
                    dropout=dropout, bidirectional=bidirectional, **settings)
    dp = dp_cls.from_module(ref)
    if tapped:
        GradSampleTracker(dp, max_grad_norm=1.0, loss_reduction="sum").attach()
    x = packed_batch(enforce_sorted)
    h0 = torch.randn(num_layers * (2 if bidirectional else 1), len(LENGTHS), 4,
                     requires_grad=True)
    c0 = torch.randn_like(h0, requires_grad=True)
    hx, inputs = ((h0, c0), [x.data, h0, c0]) if dp_cls is DPLSTM else (h0, [x.data, h0])

    def objective(out: PackedSequence, state) -> Tensor:  # uses every output
        states = state if isinstance(state, tuple) else (state,)
        return out.data.sin().sum() + sum((s * s.cos()).sum() for s in states)

    got_out, got_state = dp(x, hx)
    want_out, want_state = ref(x, hx)
    for got, want in zip(got_out[1:], want_out[1:]):  # batch_sizes, sorted/unsorted indices
        assert (got is None and want is None) or torch.equal(got, want)
    for got, want in zip((got_out.data, *got_state), (want_out.data, *want_state)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    want_grads = torch.autograd.grad(objective(want_out, want_state), inputs, retain_graph=True)
    objective(want_out, want_state).backward()  # PyTorch's weight gradients
    got_grads = torch.autograd.grad(objective(got_out, got_state), inputs, retain_graph=True)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    objective(got_out, got_state).backward()
    for got, want in ([] if tapped else _weight_grads(dp, ref)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("readout", ["state", "output"])
@pytest.mark.parametrize("rnn", [
    lambda: DPLSTM(3, 4, num_layers=2, bidirectional=True),
    lambda: DPGRU(3, 4, batch_first=True, bidirectional=True),
    lambda: DPRNN(3, 4, num_layers=2, nonlinearity="relu", bias=False)],
    ids=["lstm", "gru", "rnn"])
def test_clipped_sums_of_packed_models_match_reference(rnn, readout, enforce_sorted,
                                                       looped_reference):
    """A model whose forward takes a PackedSequence: the engine's clipped per-sample sums and
    norms equal those of per-sample passes, each sample alone (padding adds nothing)."""
    torch.manual_seed(2)
    check(Classifier(rnn(), readout), packed_batch(enforce_sorted), torch.tensor([0, 2, 1, 1, 0]),
          clip=0.5)


def test_packed_root_layer_matches_reference(looped_reference):
    """A DPLSTM (batch_first=False) given to the engine itself, a loss on its packed output and
    final states."""
    torch.manual_seed(3)

    def loss(out, y: Tensor) -> Tensor:
        padded, _ = pad_packed_sequence(out[0], batch_first=True)
        h_n, c_n = out[1]
        return F.cross_entropy(padded[:, 0, :3] + h_n[-1, :, :3] + c_n[0, :, 1:], y)

    check(DPLSTM(3, 4, num_layers=2, bidirectional=True), packed_batch(False),
          torch.tensor([0, 2, 1, 1, 0]), loss_fn=loss)


def test_make_private_on_padded_batches_and_lengths(looped_reference):
    """The usual loop through make_private: a padded batch and its lengths, packed in the
    model; with no noise the update is the reference clipped sum over the batch size."""
    torch.manual_seed(4)
    model = Classifier(DPLSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True),
                       "state").double().eval()
    x = packed_batch(False)
    padded, lengths = pad_packed_sequence(x, batch_first=True)
    y = torch.tensor([0, 2, 1, 1, 0])
    want, _ = reference_clipped_sum(model, x, y, F.cross_entropy, 0.5)
    model, opt, loader = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.0),
        DataLoader(TensorDataset(padded.detach(), lengths, y), batch_size=len(y)),
        noise_multiplier=0.0, max_grad_norm=0.5, target_delta=1e-5, poisson_sampling=False)
    for xb, lb, yb in loader:
        opt.zero_grad()
        F.cross_entropy(model(xb, lb), yb).backward()
        opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad * len(y), want[name], rtol=1e-6, atol=1e-9)
