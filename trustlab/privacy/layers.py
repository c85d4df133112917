"""DP-friendly equivalents of PyTorch's recurrent nets (LSTM, GRU, RNN), whose packed parameters
the per-sample kernels cannot reach (attention's is in :mod:`trustlab.privacy.attention`).

Each is built from ``nn.Linear`` layers (which the kernels cover, shared weights included) and
computes the same function as the PyTorch layer it replaces; ``from_module`` copies the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from trustlab.errors import ConfigError
from trustlab.privacy.recurrence import recurrence


def unsupported_option(layer: nn.Module) -> str | None:
    """The option of a PyTorch recurrent net or attention layer that its DP equivalent lacks
    (LSTM ``proj_size``; attention ``add_bias_kv``/``add_zero_attn``), else None."""
    if getattr(layer, "proj_size", 0):
        return "proj_size"
    if isinstance(layer, nn.MultiheadAttention) and (layer.bias_k is not None
                                                     or layer.add_zero_attn):
        return "add_bias_kv or add_zero_attn"
    return None


class _Cell(nn.Module):
    """The input and hidden projections of one layer and direction of a recurrent net."""

    def __init__(self, input_size: int, hidden_size: int, gates: int, bias: bool) -> None:
        super().__init__()
        self.ih = nn.Linear(input_size, gates * hidden_size, bias=bias)
        self.hh = nn.Linear(hidden_size, gates * hidden_size, bias=bias)


class _DPRecurrent(nn.Module):
    """An RNN unrolled over time from ``nn.Linear`` cells (like opacus's DPLSTM).

    The input projection runs once over the whole sequence. While the engine taps the cells,
    each layer and direction is one :func:`~trustlab.privacy.recurrence.recurrence` node whose
    hand-written BPTT hands the hidden projection's (H_prev, G) to the Linear kernel; otherwise
    the hidden projection runs once per step in autograd.

    A ``PackedSequence`` input runs padded (B, T, ·) in the batch order of the original
    sequences (that of ``hx`` and of the final states, as in PyTorch): padding follows each
    sequence's valid steps, the reverse direction reads each sequence reversed within its own
    length, and the final states are taken at each sequence's last valid step. The padded
    steps then get no gradient, so they add nothing to any sample's gradient.
    """

    gates: int
    mode: str
    torch_class: type[nn.RNNBase]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        self.dropout, self.bidirectional = dropout, bidirectional
        self.directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList(
            _Cell(input_size if layer == 0 else hidden_size * self.directions, hidden_size,
                  self.gates, bias)
            for layer in range(num_layers) for _ in range(self.directions))

    @classmethod
    def from_module(cls, rnn: nn.RNNBase) -> "_DPRecurrent":
        if unsupported_option(rnn) is not None:
            raise ConfigError("nn.LSTM with proj_size has no DP equivalent; use proj_size=0")
        new = cls(rnn.input_size, rnn.hidden_size, **_settings(rnn)).to(rnn.weight_ih_l0)
        with torch.no_grad():
            for index, cell in enumerate(new.cells):
                layer, direction = divmod(index, new.directions)
                suffix = f"l{layer}" + ("_reverse" if direction else "")
                _copy(cell.ih.weight, getattr(rnn, f"weight_ih_{suffix}"))
                _copy(cell.hh.weight, getattr(rnn, f"weight_hh_{suffix}"))
                if rnn.bias:
                    _copy(cell.ih.bias, getattr(rnn, f"bias_ih_{suffix}"))
                    _copy(cell.hh.bias, getattr(rnn, f"bias_hh_{suffix}"))
        return new.train(rnn.training)

    def to_module(self) -> nn.RNNBase:
        """The equivalent ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (weights copied), e.g. for
        checkpoints."""
        rnn = self.torch_class(self.input_size, self.hidden_size,
                               **_settings(self)).to(self.cells[0].ih.weight)
        with torch.no_grad():
            for index, cell in enumerate(self.cells):
                layer, direction = divmod(index, self.directions)
                suffix = f"l{layer}" + ("_reverse" if direction else "")
                _copy(getattr(rnn, f"weight_ih_{suffix}"), cell.ih.weight)
                _copy(getattr(rnn, f"weight_hh_{suffix}"), cell.hh.weight)
                if self.bias:
                    _copy(getattr(rnn, f"bias_ih_{suffix}"), cell.ih.bias)
                    _copy(getattr(rnn, f"bias_hh_{suffix}"), cell.hh.bias)
        return rnn.train(self.training)

    def _step(self, gates_x: Tensor, cell: _Cell, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _unrolled(self, gates_x: Tensor, cell: _Cell, h: Tensor, c: Tensor, reverse: bool
                  ) -> tuple[Tensor, Tensor]:
        """One layer and direction step by step in autograd (untapped use, torch.func): the
        hidden and (LSTM; else empty) cell states, (B, T, h)."""
        steps = gates_x.shape[1]
        hs: list[Tensor] = [h] * steps
        cs: list[Tensor] = [c] * steps
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            h, c = self._step(gates_x[:, t], cell, h, c)
            hs[t], cs[t] = h, c
        return torch.stack(hs, 1), (torch.stack(cs, 1) if self.mode == "lstm"
                                    else h.new_empty(0, 0, 0))

    def forward(self, x: Tensor | PackedSequence,
                hx: Tensor | tuple[Tensor, Tensor] | None = None):
        packed = x if isinstance(x, PackedSequence) else None
        if packed is not None:
            x, lengths = pad_packed_sequence(packed, batch_first=True)
        elif not self.batch_first:
            x = x.transpose(0, 1)
        batch, steps = x.shape[:2]
        rows = torch.arange(batch, device=x.device)
        # each sequence's last valid step; packed, the index reversing it within its length
        last = rows.new_full((batch,), steps - 1) if packed is None else (lengths - 1).to(rows)
        flip = None if packed is None else _flip_index(last, steps)
        shape = (self.num_layers * self.directions, batch, self.hidden_size)
        if hx is None:
            h0 = c0 = x.new_zeros(shape)
        elif self.mode == "lstm":
            h0, c0 = hx
        else:
            h0 = c0 = hx
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                cell = self.cells[index]
                gates_x = cell.ih(x)
                flipped = bool(direction) and flip is not None  # runs forward over it reversed
                reverse = bool(direction) and flip is None
                if flipped:
                    gates_x = _gather_steps(gates_x, flip)
                sink = cell.hh.dp_sink() if hasattr(cell.hh, "dp_sink") else None
                if sink is not None:  # tapped: one node, W_hh's record from its own BPTT
                    hs, cs = recurrence(gates_x, h0[index], c0[index], cell.hh.weight,
                                        cell.hh.bias, self.mode, reverse, sink)
                else:
                    hs, cs = self._unrolled(gates_x, cell, h0[index], c0[index], reverse)
                final = 0 if reverse else last
                h_n.append(hs[rows, final])
                if self.mode == "lstm":
                    c_n.append(cs[rows, final])
                outputs.append(_gather_steps(hs, flip) if flipped else hs)
            x = torch.cat(outputs, -1) if self.directions == 2 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout)
        if packed is not None:
            output = _repacked(x, lengths, packed)
        else:
            output = x if self.batch_first else x.transpose(0, 1)
        h_n_t = torch.stack(h_n)
        return output, ((h_n_t, torch.stack(c_n)) if self.mode == "lstm" else h_n_t)


class DPLSTM(_DPRecurrent):
    """``nn.LSTM`` (gate order i, f, g, o) from ``nn.Linear`` cells."""

    gates, mode, torch_class = 4, "lstm", nn.LSTM

    def _step(self, gates_x: Tensor, cell: _Cell, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = (gates_x + cell.hh(h)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class DPRNN(_DPRecurrent):
    """``nn.RNN`` (Elman, ``nonlinearity`` "tanh" or "relu") from ``nn.Linear`` cells."""

    gates, torch_class = 1, nn.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)
        self.nonlinearity = nonlinearity
        self.mode = f"rnn_{nonlinearity}"

    def _step(self, gates_x: Tensor, cell: _Cell, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        pre = gates_x + cell.hh(h)
        h = torch.relu(pre) if self.nonlinearity == "relu" else torch.tanh(pre)
        return h, h


class DPGRU(_DPRecurrent):
    """``nn.GRU`` (gate order r, z, n) from ``nn.Linear`` cells."""

    gates, mode, torch_class = 3, "gru", nn.GRU

    def _step(self, gates_x: Tensor, cell: _Cell, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        xr, xz, xn = gates_x.chunk(3, -1)
        hr, hz, hn = cell.hh(h).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        return h, h


def _flip_index(last: Tensor, steps: int) -> Tensor:
    """(B, T) indices that reverse each sequence within its own length (``last + 1``) and leave
    its padding in place; reversing twice is the identity."""
    t = torch.arange(steps, device=last.device)
    return torch.where(t <= last[:, None], last[:, None] - t, t)


def _gather_steps(seq: Tensor, index: Tensor) -> Tensor:
    """``seq`` (B, T, ·) with each sample's steps taken in the order ``index`` (B, T)."""
    return seq.gather(1, index[..., None].expand(-1, -1, seq.shape[2]))


def _repacked(padded: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """Batch-first ``padded`` (original batch order) packed like ``like``: the same
    ``batch_sizes``, ``sorted_indices`` and ``unsorted_indices``."""
    if like.sorted_indices is not None:
        padded = padded[like.sorted_indices]
        lengths = lengths[like.sorted_indices.cpu()]
    data = pack_padded_sequence(padded, lengths, batch_first=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _copy(dst: nn.Parameter, *sources: Tensor) -> None:
    """``dst`` gets the values of ``sources`` (concatenated: a packed weight from its parts) and
    stays trainable if any of them is (a frozen layer stays frozen once swapped)."""
    dst.copy_(sources[0] if len(sources) == 1 else torch.cat(sources))
    dst.requires_grad_(any(t.requires_grad for t in sources))


def _settings(rnn: nn.RNNBase | _DPRecurrent) -> dict:
    """The keyword arguments that rebuild ``rnn`` (a PyTorch RNN or its DP equivalent) as the
    other kind: the same for both, ``nonlinearity`` included for ``nn.RNN``/``DPRNN``."""
    names = ["num_layers", "bias", "batch_first", "dropout", "bidirectional"]
    if isinstance(rnn, nn.RNN | DPRNN):
        names.append("nonlinearity")
    return {name: getattr(rnn, name) for name in names}
