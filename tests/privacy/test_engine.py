"""The engine's clipped per-sample sums against torch.func references, layer by layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dp_reference import (assert_close_sums, engine_clipped_sum,  # noqa: F401
                          float64_default, reference_clipped_sum)
from trustlab.privacy import DPGRU, DPLSTM, DPRNN, DPMultiheadAttention
from trustlab.privacy.tracker import GradSampleTracker


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


def check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=ce, clip: float = 1.0,
          ) -> torch.Tensor:
    model = model.double().eval()
    want, norms = reference_clipped_sum(model, x, y, loss_fn, clip)
    got, got_norms = engine_clipped_sum(model, x, y, loss_fn, clip)
    assert_close_sums(got, want)
    torch.testing.assert_close(got_norms, norms, rtol=1e-6, atol=1e-9)
    return norms


class SeqHead(nn.Module):
    """body over (B, T, ·) then mean over T and a Linear head."""

    def __init__(self, body: nn.Module, width: int, classes: int = 3) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out.mean(1))


def test_mlp_with_inplace_relu_matches_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(inplace=True), nn.LayerNorm(16),
                          nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))
    norms = check(model, torch.randn(12, 10), torch.randint(0, 3, (12,)), clip=1.8)
    assert (norms > 1.8).any() and (norms < 1.8).any()  # both clipped and unclipped samples


@pytest.mark.parametrize("seq", [1, 5, 300])
def test_linear_on_sequences_matches_reference(seq):
    torch.manual_seed(seq)
    model = SeqHead(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5)), 5)
    check(model, torch.randn(3, seq, 4), torch.randint(0, 3, (3,)))


def test_ghost_and_direct_modes_agree():
    from trustlab.kernels import linear

    a, g = torch.randn(4, 7, 9), torch.randn(4, 7, 5)
    direct = linear.per_sample_weight_grads(a, g).square().sum((1, 2))
    torch.testing.assert_close(linear.ghost_sq_norms(a, g), direct)
    torch.testing.assert_close(linear.direct_sq_norms(a, g), direct)
    assert linear.choose_mode(512, 1, 100, 256) == linear.GHOST
    assert linear.choose_mode(512, 64, 128, 128) == linear.GHOST  # tie: direct is slower
    assert linear.choose_mode(512, 300, 64, 64) == linear.DIRECT_KEEP
    assert linear.choose_mode(512, 4, 512, 512) == linear.GHOST


def test_bias_norm_of_sequences_is_norm_of_sum():
    from trustlab.kernels import LayerKernel, Record, kernel_for

    layer = nn.Linear(1, 2)
    layer.weight.requires_grad_(False)
    g = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # sum_t g_t = 0, sum_t ||g_t||^2 = 2
    kernel: LayerKernel = kernel_for(layer)
    norms, _ = kernel.sq_norms(layer, [Record(torch.ones(1, 2, 1), g)])
    assert norms.item() == 0.0


class Tied(nn.Module):
    """An embedding tied to the output layer, and a Linear used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.embed.weight  # tied across module types

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.mid(torch.tanh(self.mid(self.embed(idx))))  # mid used twice
        return self.out(h).mean(1)


def test_shared_weights_used_twice_and_tied_across_layers():
    torch.manual_seed(1)
    check(Tied(), torch.randint(0, 7, (5, 6)), torch.randint(0, 7, (5,)))


@pytest.mark.parametrize("kwargs", [
    dict(stride=2, padding=1),
    dict(dilation=2, padding=2),
    dict(groups=2, padding="same"),
    dict(stride=(2, 1), padding=1, padding_mode="reflect"),
])
def test_conv2d_edge_cases(kwargs):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, **kwargs), nn.GroupNorm(2, 6), nn.ReLU(),
                          nn.Conv2d(6, 4, 1), nn.Flatten(2), nn.Linear(4 * 0 + _width(kwargs), 3))
    check(_pool_model(model), torch.randn(4, 4, 7, 7), torch.randint(0, 3, (4,)))


@pytest.mark.parametrize("kwargs", [
    dict(stride=2, dilation=(2, 1), padding=1),  # stride and dilation swap roles
    dict(stride=3, padding=(0, 2)),  # the forward-conv output has rows left over to crop
])
def test_conv2d_with_one_input_channel_per_group(kwargs):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, **kwargs), nn.ReLU(),
                          nn.Conv2d(4, 8, 3, groups=4, **kwargs), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3))
    check(model, torch.randn(4, 1, 11, 11), torch.randint(0, 3, (4,)))


def test_group_norm_on_flat_and_channels_last_inputs():
    """The batch folded into the groups must not depend on the input's layout or rank."""
    torch.manual_seed(7)
    flat = nn.Sequential(nn.Linear(6, 8), nn.GroupNorm(4, 8), nn.ReLU(), nn.Linear(8, 3))
    check(flat, torch.randn(5, 6), torch.randint(0, 3, (5,)))
    image = nn.Sequential(nn.Conv2d(2, 6, 3), nn.GroupNorm(3, 6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    x = torch.randn(5, 2, 6, 6).contiguous(memory_format=torch.channels_last)
    check(image, x, torch.randint(0, 3, (5,)))


@pytest.mark.parametrize("make_body, x_shape", [
    (lambda: nn.Sequential(nn.Linear(6, 8), nn.RMSNorm(8), nn.ReLU()), (7, 6)),  # eps=None
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.RMSNorm(6, eps=1e-5), nn.Tanh()), (5, 9, 4)),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.Unflatten(-1, (2, 3)), nn.RMSNorm((2, 3)),
                           nn.Flatten(-2)), (5, 9, 4)),  # normalised over two dims
])
def test_rms_norm_matches_reference(make_body, x_shape):
    """The weight's per-sample gradients and the hand-written input gradient (the Linear
    before the RMSNorm sees it)."""
    torch.manual_seed(3)
    body = make_body()
    model = (nn.Sequential(body, nn.Linear(body[0].out_features, 3)) if len(x_shape) == 2
             else SeqHead(body, 6))
    check(model, torch.randn(*x_shape), torch.randint(0, 3, (x_shape[0],)))


@pytest.mark.parametrize("conv, norm, x_shape", [
    (nn.Conv1d, nn.InstanceNorm1d, (5, 2, 9)),
    (nn.Conv2d, nn.InstanceNorm2d, (5, 2, 7, 7)),
    (nn.Conv3d, nn.InstanceNorm3d, (4, 2, 5, 6, 5)),
])
def test_instance_norm_matches_reference(conv, norm, x_shape):
    """A per-channel bias before an instance norm has no gradient: the conv has none."""
    torch.manual_seed(4)
    pool = {3: nn.AdaptiveAvgPool1d, 4: nn.AdaptiveAvgPool2d, 5: nn.AdaptiveAvgPool3d}
    model = nn.Sequential(conv(2, 4, 3, bias=False), norm(4, affine=True), nn.ReLU(),
                          pool[len(x_shape)](1), nn.Flatten(), nn.Linear(4, 3))
    check(model, torch.randn(*x_shape), torch.randint(0, 3, (x_shape[0],)))


@pytest.mark.parametrize("kwargs, in_channels", [
    (dict(stride=(1, 2, 1), padding=1, dilation=(2, 1, 1), groups=2), 2),
    (dict(stride=2, padding=(0, 1, 1), padding_mode="reflect"), 2),
    (dict(stride=2, dilation=(1, 2, 1), padding=1), 1),  # as one forward convolution
])
def test_conv3d_edge_cases(kwargs, in_channels):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv3d(in_channels, 4, 3, **kwargs), nn.ReLU(), nn.Conv3d(4, 3, 1),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 3))
    check(model, torch.randn(4, in_channels, 7, 6, 6), torch.randint(0, 3, (4,)))


class Bag(nn.Module):
    """An EmbeddingBag over (B, L) bags, its entries optionally weighted by a gate embedding
    (per_sample_weights that need their own gradient)."""

    def __init__(self, gated: bool = False, **options) -> None:
        super().__init__()
        self.bag, self.head = nn.EmbeddingBag(9, 5, **options), nn.Linear(5, 3)
        self.gate = nn.Embedding(9, 1) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.gate(x)).squeeze(-1) if self.gate is not None else None
        return self.head(torch.tanh(self.bag(x, per_sample_weights=weights)))


@pytest.mark.parametrize("options", [
    dict(mode="sum"), dict(mode="mean"), dict(mode="mean", padding_idx=0),
    dict(mode="sum", padding_idx=2), dict(mode="sum", padding_idx=0, gated=True),
])
@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap of embedding_bag
def test_embedding_bag_matches_reference(options):
    """Repeated indices in a bag, a bag of one repeated index, a bag all padding but one."""
    torch.manual_seed(6)
    x = torch.randint(0, 9, (6, 5))
    x[0], x[1, 1:] = 3, 0
    check(Bag(**options), x, torch.randint(0, 3, (6,)))


@pytest.mark.parametrize("include_last_offset", [False, True])
def test_embedding_bag_with_offsets_matches_a_per_sample_loop(include_last_offset):
    """Bags of different lengths (one empty) as one flat index list and offsets."""
    torch.manual_seed(7)
    bags = [[1, 2, 2], [], [4], [3, 3, 3, 8], [0, 7]]
    model = nn.Sequential(nn.EmbeddingBag(9, 5, mode="mean",
                                          include_last_offset=include_last_offset))
    head = nn.Linear(5, 3)

    def loss(bags_: list[list[int]], y: torch.Tensor, layers: nn.Module, out: nn.Module):
        flat = torch.tensor([i for b in bags_ for i in b], dtype=torch.long)
        ends = torch.tensor([len(b) for b in bags_]).cumsum(0)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), ends])
        offsets = offsets if include_last_offset else offsets[:-1]
        return F.cross_entropy(out(torch.tanh(layers[0](flat, offsets))), y)

    y = torch.randint(0, 3, (len(bags),))
    params = [*model.parameters(), *head.parameters()]
    want = [torch.zeros_like(p) for p in params]
    for bag, label in zip(bags, y):
        grads = torch.autograd.grad(loss([bag], label[None], model, head), params)
        factor = min(1.0, 1.0 / (torch.cat([g.flatten() for g in grads]).norm().item() + 1e-6))
        want = [w + factor * g for w, g in zip(want, grads)]
    tracked = nn.ModuleList([model[0], head])
    tracker = GradSampleTracker(tracked, 1.0, "mean")
    tracker.attach()
    loss(bags, y, tracked, tracked[1]).backward()
    for p, w in zip(tracked.parameters(), want):
        torch.testing.assert_close(tracker.summed[p], w)


class TextClassifier(nn.Module):
    """PyTorch's text-classification tutorial model: ``forward(text, offsets)``, the flat token
    list first."""

    def __init__(self, include_last_offset: bool) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(9, 5, mode="mean", include_last_offset=include_last_offset)
        self.fc = nn.Linear(5, 3)

    def forward(self, text: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.bag(text, offsets)))


@pytest.mark.parametrize("include_last_offset", [False, True])
def test_a_model_taking_flat_text_and_offsets_is_clipped_per_bag(include_last_offset):
    """Its first argument is the flat token list, not one row per sample: the batch is the bags
    (it was taken to be the token count, and every step refused with a message about
    sequence-first tensors)."""
    torch.manual_seed(8)
    bags, y = [[1, 2, 2], [4], [3, 3, 3, 8], [0, 7]], torch.randint(0, 3, (4,))
    model = TextClassifier(include_last_offset)

    def loss(bags_: list[list[int]], labels: torch.Tensor) -> torch.Tensor:
        flat = torch.tensor([i for b in bags_ for i in b], dtype=torch.long)
        offsets = torch.tensor([0, *[len(b) for b in bags_]]).cumsum(0)
        return F.cross_entropy(model(flat, offsets if include_last_offset else offsets[:-1]),
                               labels)

    want = [torch.zeros_like(p) for p in model.parameters()]
    for bag, label in zip(bags, y):
        grads = torch.autograd.grad(loss([bag], label[None]), list(model.parameters()))
        factor = min(1.0, 0.5 / (torch.cat([g.flatten() for g in grads]).norm().item() + 1e-6))
        want = [w + factor * g for w, g in zip(want, grads)]
    tracker = GradSampleTracker(model, 0.5, "mean")
    tracker.attach()
    loss(bags, y).backward()
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(tracker.summed[p], w)


def _width(kwargs: dict) -> int:
    return nn.Conv2d(4, 6, 3, **kwargs)(torch.zeros(1, 4, 7, 7)).flatten(2).shape[-1]


def _pool_model(model: nn.Sequential) -> nn.Module:
    return nn.Sequential(model, _Mean())


class _Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


@pytest.mark.parametrize("fold_chunk, keep_limit", [(128, None), (2, None), (2, 0)])
def test_conv1d_with_groups_and_stride(fold_chunk, keep_limit, monkeypatch):
    from trustlab.kernels import conv

    monkeypatch.setattr(conv, "FOLD_CHUNK", fold_chunk)  # 2: samples folded in uneven chunks
    if keep_limit is not None:  # records keep (x, g); norms formed a few samples at a time
        monkeypatch.setattr(conv, "KEEP_LIMIT_ELEMS", keep_limit)
        monkeypatch.setattr(conv, "CHUNK_ELEMS", 40)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, stride=2, groups=4, padding=1), nn.ReLU(),
                          nn.Conv1d(8, 3, 2, dilation=2), _Mean(), nn.Linear(3 * 0 + 4, 3))
    check(model, torch.randn(5, 4, 12), torch.randint(0, 3, (5,)))


def test_embedding_with_repeated_indices_and_padding_idx():
    torch.manual_seed(4)
    model = SeqHead(nn.Embedding(5, 6, padding_idx=0), 6)
    idx = torch.tensor([[1, 1, 1, 2], [0, 0, 3, 3], [4, 2, 4, 0]])
    check(model, idx, torch.randint(0, 3, (3,)))


def test_dp_layers_match_reference():
    torch.manual_seed(5)
    model = SeqHead(DPLSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True), 10)
    check(model, torch.randn(4, 6, 3), torch.randint(0, 3, (4,)))
    check(SeqHead(DPGRU(3, 5, batch_first=True), 5), torch.randn(4, 6, 3),
          torch.randint(0, 3, (4,)))
    for nonlinearity in ("tanh", "relu"):
        check(SeqHead(DPRNN(3, 5, num_layers=2, nonlinearity=nonlinearity, batch_first=True,
                            bidirectional=True), 10), torch.randn(4, 6, 3),
              torch.randint(0, 3, (4,)))

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = DPMultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    check(SeqHead(Attn(), 8), torch.randn(4, 5, 8), torch.randint(0, 3, (4,)))


def test_ignore_index_samples_contribute_nothing():
    torch.manual_seed(6)
    model = SeqHead(nn.Linear(4, 5), 5, classes=3)
    x, y = torch.randn(6, 3, 4), torch.tensor([0, -100, 2, -100, 1, 1])

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target, ignore_index=-100, reduction="sum")

    model = model.double()
    want, norms = reference_clipped_sum(model, x, y, loss, 1.0)
    got, got_norms = engine_clipped_sum(model, x, y, loss, 1.0, loss_reduction="sum")
    assert_close_sums(got, want)
    assert got_norms[1] == 0 and got_norms[3] == 0


class _Checkpointed(nn.Module):
    """Reentrant activation checkpointing around the last layer (when ``reentrant``): its
    backward runs in a nested pass that ends before the first layer is recorded."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(5, 8), nn.Linear(8, 3)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint
        h = torch.tanh(self.first(x))
        return checkpoint(self.last, h, use_reentrant=True) if self.reentrant else self.last(h)


def test_reentrant_checkpointing_is_clipped_once_per_sample():
    """The flush used to run at the end of the nested pass: each sample clipped in two parts,
    each to C (up to sqrt(2) C), and counted twice. (The reference, torch.func, runs the same
    model without checkpointing: it cannot trace the reentrant checkpoint.)"""
    torch.manual_seed(0)
    plain = _Checkpointed(reentrant=False).double()
    checkpointed = _Checkpointed(reentrant=True).double()
    checkpointed.load_state_dict(plain.state_dict())
    x, y = torch.randn(8, 5) * 3, torch.randint(0, 3, (8,))
    want, norms = reference_clipped_sum(plain, x, y, ce, 0.5)
    got, got_norms = engine_clipped_sum(checkpointed, x, y, ce, 0.5)
    assert_close_sums(got, want)
    assert len(got_norms) == 8


@pytest.mark.parametrize("make", [lambda: nn.GroupNorm(2, 4), lambda: nn.LayerNorm(6),
                                  lambda: nn.RMSNorm(6), lambda: nn.InstanceNorm1d(4, affine=True)],
                         ids=["group", "layer", "rms", "instance"])
def test_norm_layers_take_an_empty_batch(make):
    """An empty Poisson batch through a norm layer crashed the tap (plain torch runs it)."""
    model = nn.Sequential(nn.Conv1d(2, 4, 3), make())
    tracker = GradSampleTracker(model, 1.0, "sum")
    tracker.attach()
    model(torch.zeros(0, 2, 8)).sum().backward()
    assert tracker.samples == 0 and all(p.grad is None for p in model.parameters())


def test_group_norm_on_a_permuted_input_matches_reference():
    """A channels-last tensor permuted to (B, C, L) is not contiguous: ATen's group norm
    refused it inside the tap."""
    class Permuted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.head = nn.GroupNorm(2, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(x.permute(0, 2, 1)).mean(2))

    torch.manual_seed(0)
    check(Permuted(), torch.randn(5, 6, 4), torch.randint(0, 3, (5,)))
