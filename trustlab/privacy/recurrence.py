"""One layer and direction of an LSTM/GRU/RNN as a single autograd node with hand-written BPTT.

Used by the DP recurrent layers while the engine taps them: the input projection
``gates_x = x W_ih^T + b_ih`` stays an ordinary (tapped) Linear over the whole sequence and the
hidden projection ``h_{t-1} W_hh^T + b_hh`` runs inside this node. Its backward computes the
per-step gradients ``G_h`` (B, T, gates·h) of the hidden projection's output and hands
``(H_prev, G_h)`` to the hidden Linear's sink: the per-sample gradient of ``W_hh`` is
``sum_t g_t h_{t-1}^T``, a sequence Linear that the Linear kernel covers. Autograd computes no
weight gradient (book-keeping) and records no per-step graph. Buffers are time-major (T, B, ·)
so that every step reads and writes contiguous rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trustlab.kernels import Record
from trustlab.kernels.registry import Sink


def _lstm_forward(gx: Tensor, h: Tensor, c: Tensor, w: Tensor, order: range
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """H, C (T, B, h), the gate activations (T, B, 4h; tanh of the candidate in the g slot)
    and H_prev (T, B, h) from time-major gate inputs ``gx`` (T, B, 4h), biases included."""
    steps, batch, width = gx.shape
    hid = width // 4
    hs, cs, h_prev = (gx.new_empty(steps, batch, hid) for _ in range(3))
    acts = torch.empty_like(gx)
    wt = w.t()
    for t in order:
        h_prev[t] = h
        gates = torch.addmm(gx[t], h, wt)
        act = acts[t]
        torch.sigmoid(gates, out=act)
        act[:, 2 * hid:3 * hid].copy_(gates[:, 2 * hid:3 * hid].tanh())
        i, f, g, o = act.chunk(4, 1)
        c = torch.addcmul(f * c, i, g, out=cs[t])
        h = torch.mul(o, c.tanh(), out=hs[t])
    return hs, cs, acts, h_prev


def _lstm_backward(w: Tensor, acts: Tensor, cs: Tensor, c0: Tensor, order: range,
                   d_hs: Tensor | None, d_cs: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """BPTT: gate pre-activation gradients (T, B, 4h) and the gradients of h0 and c0."""
    grads = torch.empty_like(acts)
    dh, dc = torch.zeros_like(c0), torch.zeros_like(c0)
    steps = list(order)
    for k in range(len(steps) - 1, -1, -1):
        t = steps[k]
        if d_hs is not None:
            dh = dh + d_hs[t]
        if d_cs is not None:
            dc = dc + d_cs[t]
        i, f, g, o = acts[t].chunk(4, 1)
        tc = cs[t].tanh()
        dc = torch.addcmul(dc, dh * o, 1 - tc * tc)
        gi, gf, gg, go = grads[t].chunk(4, 1)
        torch.mul(dc * g, i * (1 - i), out=gi)
        torch.mul(dc * (cs[steps[k - 1]] if k else c0), f * (1 - f), out=gf)
        torch.mul(dc * i, 1 - g * g, out=gg)
        torch.mul(dh * tc, o * (1 - o), out=go)
        dc = dc * f
        dh = grads[t] @ w
    return grads, dh, dc


def _gru_forward(gx: Tensor, h: Tensor, w: Tensor, b: Tensor | None, order: range
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """H (T, B, h), the hidden projections (T, B, 3h), the activations r, z, n (T, B, 3h) and
    H_prev (T, B, h) from time-major ``gx`` (T, B, 3h)."""
    steps, batch, width = gx.shape
    hid = width // 3
    hs, h_prev = gx.new_empty(steps, batch, hid), gx.new_empty(steps, batch, hid)
    projs, acts = torch.empty_like(gx), torch.empty_like(gx)
    wt = w.t()
    for t in order:
        h_prev[t] = h
        hp = torch.addmm(b, h, wt, out=projs[t]) if b is not None else torch.mm(h, wt, out=projs[t])
        xr, xz, xn = gx[t].chunk(3, 1)
        hr, hz, hn = hp.chunk(3, 1)
        r, z, n = acts[t].chunk(3, 1)
        torch.sigmoid(xr + hr, out=r)
        torch.sigmoid(xz + hz, out=z)
        torch.tanh(torch.addcmul(xn, r, hn), out=n)
        h = torch.addcmul(n, z, h - n, out=hs[t])
    return hs, projs, acts, h_prev


def _gru_backward(w: Tensor, acts: Tensor, projs: Tensor, h_prev: Tensor, order: range,
                  d_hs: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """BPTT: gradients (T, B, 3h) of gates_x and of the hidden projections, and of h0."""
    hid = h_prev.shape[2]
    g_x, g_h = torch.empty_like(acts), torch.empty_like(acts)
    dh = torch.zeros_like(h_prev[0])
    for t in reversed(order):
        if d_hs is not None:
            dh = dh + d_hs[t]
        r, z, n = acts[t].chunk(3, 1)
        dr, dz, dn = g_x[t].chunk(3, 1)
        torch.mul(dh * (1 - z), 1 - n * n, out=dn)
        torch.mul(dn * projs[t, :, 2 * hid:], r * (1 - r), out=dr)
        torch.mul(dh * (h_prev[t] - n), z * (1 - z), out=dz)
        g_h[t, :, :2 * hid] = g_x[t, :, :2 * hid]
        torch.mul(dn, r, out=g_h[t, :, 2 * hid:])
        dh = torch.addmm(dh * z, g_h[t], w)
    return g_x, g_h, dh


def _rnn_forward(gx: Tensor, h: Tensor, w: Tensor, order: range, relu: bool
                 ) -> tuple[Tensor, Tensor]:
    """H and H_prev (T, B, h) of an Elman RNN (tanh or ReLU) from time-major ``gx`` (T, B, h),
    biases included."""
    hs, h_prev = torch.empty_like(gx), torch.empty_like(gx)
    wt = w.t()
    for t in order:
        h_prev[t] = h
        pre = torch.addmm(gx[t], h, wt)
        h = torch.clamp(pre, min=0, out=hs[t]) if relu else torch.tanh(pre, out=hs[t])
    return hs, h_prev


def _rnn_backward(w: Tensor, hs: Tensor, order: range, d_hs: Tensor | None, relu: bool
                  ) -> tuple[Tensor, Tensor]:
    """BPTT: pre-activation gradients (T, B, h) and the gradient of h0."""
    grads = torch.empty_like(hs)
    dh = torch.zeros_like(hs[0])
    for t in reversed(order):
        if d_hs is not None:
            dh = dh + d_hs[t]
        h = hs[t]
        torch.mul(dh, h > 0 if relu else 1 - h * h, out=grads[t])
        dh = grads[t] @ w
    return grads, dh


class _Recurrence(torch.autograd.Function):
    """(gates_x, h0, c0) -> (H, C) for one layer and direction; see the module doc."""

    @staticmethod
    def forward(ctx: Any, gx: Tensor, h0: Tensor, c0: Tensor, w: Tensor, b: Tensor | None,
                mode: str, reverse: bool, sink: Sink) -> tuple[Tensor, Tensor]:
        steps = gx.shape[1]
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        ctx.mode, ctx.order, ctx.sink = mode, order, sink
        ctx.set_materialize_grads(False)
        gx = gx.transpose(0, 1)
        cs = h0.new_empty(0, 0)
        if mode == "lstm":
            hs, cs, acts, h_prev = _lstm_forward(gx if b is None else gx + b, h0, c0, w, order)
            ctx.save_for_backward(w, acts, cs, h_prev, c0)
        elif mode == "gru":
            hs, projs, acts, h_prev = _gru_forward(gx, h0, w, b, order)
            ctx.save_for_backward(w, acts, projs, h_prev)
        else:
            hs, h_prev = _rnn_forward(gx if b is None else gx + b, h0, w, order,
                                      mode == "rnn_relu")
            ctx.save_for_backward(w, hs, h_prev)
        return hs.transpose(0, 1), cs.transpose(0, 1)

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor | None, d_cs: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        d_hs = None if d_hs is None else d_hs.transpose(0, 1)
        dc = None
        if ctx.mode == "lstm":
            w, acts, cs, h_prev, c0 = ctx.saved_tensors
            d_cs = None if d_cs is None else d_cs.transpose(0, 1)
            g_x, dh, dc = _lstm_backward(w, acts, cs, c0, ctx.order, d_hs, d_cs)
            g_h = g_x
        elif ctx.mode == "gru":
            w, acts, projs, h_prev = ctx.saved_tensors
            g_x, g_h, dh = _gru_backward(w, acts, projs, h_prev, ctx.order, d_hs)
        else:
            w, hs, h_prev = ctx.saved_tensors
            g_x, dh = _rnn_backward(w, hs, ctx.order, d_hs, ctx.mode == "rnn_relu")
            g_h = g_x
        ctx.sink(Record(h_prev.transpose(0, 1), g_h.transpose(0, 1)))
        return (g_x.transpose(0, 1), dh if ctx.needs_input_grad[1] else None,
                dc if ctx.needs_input_grad[2] else None, None, None, None, None, None)


def recurrence(gates_x: Tensor, h0: Tensor, c0: Tensor, weight: Tensor, bias: Tensor | None,
               mode: str, reverse: bool, sink: Sink) -> tuple[Tensor, Tensor]:
    """The hidden states H and cell states C (B, T, h) of one LSTM (``mode="lstm"``), GRU
    (``"gru"``) or Elman RNN (``"rnn_tanh"``, ``"rnn_relu"``) layer and direction (C is empty
    and ``c0`` ignored but for the LSTM) over batch-first ``gates_x = x W_ih^T + b_ih``,
    reporting the hidden projection's :class:`Record` to ``sink`` in backward. ``weight`` and
    ``bias`` are the hidden projection's: inputs of the autograd node (so a backward pass is
    seen to train them), which gives them no gradient. Under autocast the recurrence runs in
    the weight's dtype (its hand-written BPTT keeps one dtype throughout)."""
    dtype = weight.dtype
    with torch.autocast(gates_x.device.type, enabled=False):
        return _Recurrence.apply(gates_x.to(dtype), h0.to(dtype), c0.to(dtype), weight, bias,
                                 mode, reverse, sink)
