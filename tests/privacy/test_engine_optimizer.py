"""make_private end to end: noise, Poisson sampling, averaging, accumulation, bad input."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from dp_reference import assert_close_sums, per_sample_grads, train_steps
from trustlab.errors import ConfigError, TrustlabError
from trustlab.kernels import clip, philox
from trustlab.privacy import compute_epsilon, fix, make_private


def _setup(n: int = 64, batch: int = 16, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    data = TensorDataset(torch.randn(n, 5), torch.randint(0, 2, (n,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = dict(noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5, noise_seed=0)
    return make_private(model, opt, DataLoader(data, batch_size=batch), **{**args, **kwargs})


@pytest.mark.parametrize("secure", [False, True], ids=["torch", "secure_mode"])
def test_noise_std_is_sigma_times_c(secure):
    model, opt, _ = _setup(noise_multiplier=1.3, max_grad_norm=0.7, poisson_sampling=False,
                           secure_mode=secure, noise_seed=None if secure else 0)
    draws = []
    for _ in range(40):  # no backward: pure noise, divided by the expected batch size 16
        opt.zero_grad()
        opt.step()
        draws += [p.grad.flatten() * opt.expected_batch_size for p in model.parameters()]
    noise = torch.cat(draws)
    n = noise.numel()  # about 4000 draws: std estimate within ~1.1% (1 s.d.)
    assert abs(noise.std().item() / (1.3 * 0.7) - 1) < 4 / (2 * n) ** 0.5
    assert abs(noise.mean().item()) < 4 * 1.3 * 0.7 / n ** 0.5
    assert opt.privacy_facts(1e-5).secure_mode == secure


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "torch"])
def test_noise_is_the_seeded_generators_sequence(native, monkeypatch):
    """Each step's noise follows from the generator seeded with ``noise_seed`` (reproducible
    runs), whose first draw is the optimizer's noise key: with the native kernel, one Philox
    key per step (that key mixed with the step number) and each parameter its own stream;
    with torch's sampler, the generator's next draw laid out over the parameters in order."""
    monkeypatch.setenv("TRUSTLAB_NATIVE", native)
    model, opt, _ = _setup(noise_multiplier=1.3, max_grad_norm=0.7, poisson_sampling=False)
    params = list(model.parameters())
    generator = torch.Generator().manual_seed(0)
    base_key = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    assert opt.noise_key == base_key
    for step in range(3):
        opt.zero_grad()
        opt.step()
        if philox.native_available(params[0]):
            key = clip.step_key(base_key, step)
            noise = torch.cat([philox.philox_normals(p.numel(), key, stream)
                               for stream, p in enumerate(params)])
        else:
            noise = torch.randn(sum(p.numel() for p in params), generator=generator)
        torch.testing.assert_close(torch.cat([p.grad.flatten() for p in params]),
                                   noise * 1.3 * 0.7 / opt.expected_batch_size,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "torch"])
def test_a_step_retried_after_a_failure_draws_new_noise(native, monkeypatch):
    """The wrapped optimizer raises after the noisy gradients are written: they are accounted
    (they are out, in p.grad), and the retry (no new batch, so its gradient is noise alone)
    must not reuse that noise: with one key the two gradients' difference would be the
    clipped sum without noise."""
    monkeypatch.setenv("TRUSTLAB_NATIVE", native)
    model, opt, _ = _setup(poisson_sampling=False)
    failures = [RuntimeError("the wrapped step failed")]

    def wrapped_step(*args, **kwargs):
        if failures:
            raise failures.pop()
    monkeypatch.setattr(opt.original_optimizer, "step", wrapped_step)
    x, y = torch.randn(16, 5), torch.randint(0, 2, (16,))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    summed = [opt.tracker.summed[p].clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="wrapped step failed"):
        opt.step()
    assert opt.steps == 1 and opt.epsilon(1e-5) > 0  # the noisy gradients are out: accounted
    first = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    opt.step()  # nothing accumulated: the noise alone
    second = [p.grad for p in model.parameters()]
    difference = torch.cat([(a - b).flatten() for a, b in zip(first, second)])
    difference = difference * opt.expected_batch_size
    clipped = torch.cat([s.flatten() for s in summed])
    assert not torch.allclose(difference, clipped, atol=1e-3)


def test_average_divides_by_expected_not_realised_batch_size():
    model, opt, loader = _setup(noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False)
    assert opt.expected_batch_size == pytest.approx(16)
    x, y = torch.randn(5, 5), torch.randint(0, 2, (5,))  # a small realised batch
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    F.cross_entropy(ref(x), y, reduction="sum").backward()
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad / 16)


def test_poisson_loader_and_empty_batches():
    model, opt, loader = _setup(n=40, batch=1)  # q = 1/40: most batches are empty
    sizes = train_steps(model, opt, loader)  # an empty batch still adds noise, is accounted
    assert 0 in sizes and len(set(sizes)) > 1
    assert opt.steps == len(sizes)
    eps = compute_epsilon(1.0, 1 / 40, len(sizes), 1e-5)
    assert opt.epsilon(1e-5) == pytest.approx(eps, rel=1e-6)
    facts = opt.privacy_facts(1e-5).to_dict()
    assert facts["steps"] == len(sizes) and facts["sample_rate"] == pytest.approx(1 / 40)


def test_fixed_batches_of_a_custom_batch_sampler_are_accounted_at_one_over_len():
    """A loader built on a batch_sampler has batch_size None: the rate is each sample's chance
    to be in a step, 1 / len(loader) (8 batches of 8: 1/8), never 1 / N."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 2, (64,)))
    sampler = BatchSampler(RandomSampler(data), batch_size=8, drop_last=False)
    model = nn.Sequential(nn.Linear(5, 2))
    model, opt, loader = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(data, batch_sampler=sampler),
        noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5, poisson_sampling=False)
    assert opt.sample_rate == pytest.approx(1 / 8) and opt.expected_batch_size == pytest.approx(8)
    train_steps(model, opt, loader)  # not refused by the sample-count check
    assert opt.epsilon(1e-5) == pytest.approx(compute_epsilon(1.0, 1 / 8, 8, 1e-5), rel=1e-9)


def test_a_loader_without_batches_is_a_clear_error():
    model = nn.Linear(5, 2)
    with pytest.raises(ConfigError, match="no batches"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1),
                     DataLoader(TensorDataset(torch.zeros(0, 5)), batch_size=4),
                     noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5)


def test_forward_backward_on_empty_batch_is_a_noise_only_step():
    model, opt, _ = _setup(noise_multiplier=0.0, poisson_sampling=False)
    F.cross_entropy(model(torch.zeros(0, 5)), torch.zeros(0, dtype=torch.long),
                    reduction="sum").backward()
    opt.step()
    assert all((p.grad == 0).all() for p in model.parameters())


def test_a_step_needs_a_new_batch_from_the_returned_loader():
    """Two steps on one Poisson batch, or a step on a batch from elsewhere (the loader given to
    make_private instead of the one it returned), would be accounted as fresh Poisson batches:
    refused before any update; skipping a received batch is allowed."""
    model, opt, loader = _setup(noise_multiplier=0.0)
    batches = iter(loader)
    x, y = next(batches)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(TrustlabError, match="without a new batch from the data loader"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)) and opt.steps == 1
    next(batches)  # received and skipped: not a privacy cost
    x, y = next(batches)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert opt.steps == 2


def test_a_loop_fetching_ahead_of_its_steps_is_not_refused():
    """A fetcher one batch ahead (as Lightning's prefetching fetcher) or the whole epoch listed
    first: each step is matched with the oldest batch received and not stepped yet."""
    model, opt, loader = _setup(n=64, batch=4, noise_multiplier=0.0)
    batches = iter(loader)
    ahead = next(batches)
    for upcoming in batches:
        (x, y), ahead = ahead, upcoming
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert opt.steps == len(loader) - 1
    epoch = list(loader)
    for x, y in epoch:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert opt.steps == 2 * len(loader) - 1


def test_rows_that_are_not_samples_are_refused_even_when_fewer():
    """A sequence-first input to a model of Linear layers: each time step was clipped as a
    sample (one sample moved the sum by 1.62 C), and nothing refused it while T <= B."""
    model, opt, loader = _setup(n=64, batch=16)
    x, _ = next(iter(loader))  # 16 samples expected
    assert len(x) > 3
    steps_first = torch.randn(3, len(x), 5)  # (T, B, features): rows are time steps
    opt.zero_grad()
    model(steps_first).sum().backward()
    with pytest.raises(TrustlabError, match="Fewer: rows that are not samples"):
        opt.step()
    assert opt.steps == 0


def test_gradient_accumulation_equals_one_big_batch():
    x, y = torch.randn(12, 5), torch.randint(0, 2, (12,))
    grads = []
    for chunks in (1, 3):
        model, opt, _ = _setup(noise_multiplier=0.0, max_grad_norm=0.05, poisson_sampling=False)
        opt.zero_grad()
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks)):
            F.cross_entropy(model(xc), yc).backward()
        opt.step()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def _step_grads(extra_passes) -> list[torch.Tensor]:
    """Gradients a noiseless step writes after one training backward and ``extra_passes``."""
    model, opt, _ = _setup(noise_multiplier=0.0, max_grad_norm=0.05, poisson_sampling=False)
    torch.manual_seed(1)
    x, y = torch.randn(12, 5), torch.randint(0, 2, (12,))
    opt.zero_grad()
    extra_passes(model, x, y)
    opt.step()
    return [p.grad.clone() for p in model.parameters()]


def _train_backward(model, x, y, **kwargs):
    F.cross_entropy(model(x), y).backward(**kwargs)


def _input_gradient_passes(model, x, y):
    """A training backward, then what an attack or a saliency map does to the same model."""
    _train_backward(model, x, y)
    for _ in range(3):
        x_adv = x.clone().requires_grad_()
        torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
    x_adv = x.clone().requires_grad_()
    F.cross_entropy(model(x_adv), y).backward(inputs=[x_adv])


def test_input_gradient_passes_do_not_add_to_the_step():
    """Gradients of inputs only (``torch.autograd.grad(loss, x)``, ``backward(inputs=[x])``)
    record nothing: counted, each sample would enter the step four more times (sensitivity
    5C under noise calibrated for C, a silent privacy loss)."""
    want = _step_grads(_train_backward)
    assert any(g.abs().sum() > 0 for g in want)
    for got, ref in zip(_step_grads(_input_gradient_passes), want):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")
def test_backward_with_create_graph_steps_like_plain_backward():
    want = _step_grads(_train_backward)
    got = _step_grads(lambda m, x, y: _train_backward(m, x, y, create_graph=True))
    for g, w in zip(got, want):
        assert not g.requires_grad
        torch.testing.assert_close(g, w)


def test_second_backward_through_one_forward_is_an_error_and_records_nothing():
    """``retain_graph=True`` and a second backward would clip and count the batch twice;
    the error keeps the first pass's sums and leaves nothing of the second pending."""
    model, opt, _ = _setup(noise_multiplier=0.0, max_grad_norm=0.05, poisson_sampling=False)
    x, y = torch.randn(12, 5), torch.randint(0, 2, (12,))
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)
    first = {p: s.clone() for p, s in opt.tracker.summed.items()}
    with pytest.raises(TrustlabError, match="backpropagated twice"):
        loss.backward()
    assert not opt.tracker.records and opt.tracker.samples == 12
    assert all(torch.equal(first[p], s) for p, s in opt.tracker.summed.items())
    F.cross_entropy(model(x), y).backward()  # a new forward: gradient accumulation as usual
    assert opt.tracker.samples == 24
    opt.step()
    loss = F.cross_entropy(model(x), y)  # after step() the same graph may be used again
    loss.backward(retain_graph=True)
    opt.zero_grad()
    loss.backward()
    assert opt.tracker.samples == 12


@pytest.mark.parametrize("poisson", [True, False])
def test_steps_spanning_several_loader_batches_are_refused(poisson):
    """Stepping once per four loader batches quadruples the real sampling rate behind the
    accountant's back: refused before any update; with Poisson batches at the first step (more
    rows clipped than the last batch holds), with fixed ones once the sample count cannot be
    chance."""
    model, opt, loader = _setup(n=400, batch=16, poisson_sampling=poisson)
    batches = iter(loader)
    message = "rows were clipped as samples" if poisson else "spans several loader batches"
    with pytest.raises(TrustlabError, match=message):
        for _ in range(10):
            before = [p.detach().clone() for p in model.parameters()]
            opt.zero_grad()
            for _ in range(4):
                x, y = next(batches)
                F.cross_entropy(model(x), y).backward()
            opt.step()
    assert opt.steps == 0 if poisson else opt.steps < 10
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("pattern", ["concatenated views", "two backward passes",
                                     "a generator pass since zero_grad"])
def test_a_sample_clipped_in_several_rows_is_refused(pattern):
    """Each row is clipped to C on its own: a sample in two rows moved the clipped sum by 1.94 C
    (views concatenated, FixMatch-style), and the statistical sample count let 14 such steps
    through before refusing with a message about loader batches."""
    model, opt, loader = _setup(n=64, batch=4)
    x, y = next(iter(loader))
    opt.zero_grad()
    if pattern == "concatenated views":
        F.cross_entropy(model(torch.cat([x, x + 0.1])), torch.cat([y, y])).backward()
    elif pattern == "two backward passes":
        F.cross_entropy(model(x), y).backward()
        F.cross_entropy(model(x + 0.1), y).backward()
    else:  # a DP-GAN: the generator's loss backpropagates through the private discriminator
        F.cross_entropy(model(torch.randn(5, 5)), torch.ones(5, dtype=torch.long)).backward()
        F.cross_entropy(model(x), y).backward()
    with pytest.raises(TrustlabError, match="rows were clipped as samples"):
        opt.step()
    assert opt.steps == 0
    opt.zero_grad()  # the usual loop goes on
    F.cross_entropy(model(torch.cat([x])), y).backward()
    opt.step()
    assert opt.steps == 1


def test_one_poisson_batch_per_step_is_never_refused():
    model, opt, loader = _setup(n=100, batch=4)
    for _ in range(8):  # 200 steps of q = 0.04
        for x, y in loader:
            opt.zero_grad()
            if len(x):
                F.cross_entropy(model(x), y).backward()
            opt.step()
    assert opt.steps == 200 and opt.samples_seen > 0


def test_resuming_from_state_dict_continues_epsilon_and_the_noise_stream():
    """Three steps, a save and load (weights_only) into a fresh private optimizer with the same
    seed, two more steps: the same parameters and ε as five uninterrupted steps. Without the
    privacy state the resumed run would report the ε of two steps and replay the first noise."""
    torch.manual_seed(2)
    batches = [(torch.randn(16, 5), torch.randint(0, 2, (16,))) for _ in range(5)]
    model, opt, _ = _setup(poisson_sampling=False)
    train_steps(model, opt, batches)
    want, want_eps = [p.detach().clone() for p in model.parameters()], opt.epsilon(1e-5)
    model, opt, _ = _setup(poisson_sampling=False)
    train_steps(model, opt, batches[:3])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, opt, _ = _setup(poisson_sampling=False)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    train_steps(model, opt, batches[3:])
    assert opt.steps == 5 and opt.epsilon(1e-5) == pytest.approx(want_eps, rel=1e-9)
    for got, ref in zip(model.parameters(), want):
        torch.testing.assert_close(got, ref)


def test_a_state_dict_without_a_noise_key_resumes_with_a_fresh_one():
    """States saved before the noise key was kept (each step's key then came from the
    generator): loading one draws a new key from the restored generator, not the key of a
    fresh optimizer with the same seed (whose noise the first run already used)."""
    model, opt, _ = _setup(poisson_sampling=False)
    opt.zero_grad()
    opt.step()
    state = opt.state_dict()
    assert state["privacy"]["noise_key"] == opt.noise_key is not None
    del state["privacy"]["noise_key"]
    _, resumed, _ = _setup(poisson_sampling=False)
    resumed.load_state_dict(state)
    assert resumed.noise_key is None
    resumed.zero_grad()
    resumed.step()
    assert resumed.noise_key is not None and resumed.noise_key != opt.noise_key


def test_a_resumed_run_draws_new_poisson_batches():
    """The masks came from torch's default generator: a resumed run seeded like the first drew
    the first epoch's batches again, accounted as fresh ones (ε reported 3.37 for 5.48 spent in
    one probe). Resumed at an epoch's end it now equals the uninterrupted run."""
    model, opt, loader = _setup()
    uninterrupted = [train_steps(model, opt, loader) for _ in range(2)]
    want = [p.detach().clone() for p in model.parameters()]
    model, opt, loader = _setup()
    first = train_steps(model, opt, loader)
    saved = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    model, opt, loader = _setup()  # seeds torch's generator as the first run did
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    assert [first, train_steps(model, opt, loader)] == uninterrupted
    assert uninterrupted[0] != uninterrupted[1]
    for got, ref in zip(model.parameters(), want):
        torch.testing.assert_close(got, ref)


def test_loading_a_state_dict_without_privacy_state_is_a_clear_error():
    model, opt, _ = _setup(poisson_sampling=False)
    with pytest.raises(ConfigError, match="no privacy state"):
        opt.load_state_dict(opt.original_optimizer.state_dict())
    _, prv, _ = _setup(poisson_sampling=False, accountant="prv")
    with pytest.raises(ConfigError, match="same accountant"):
        prv.load_state_dict(opt.state_dict())


def test_per_sample_contributions_are_clipped():
    model, opt, _ = _setup(noise_multiplier=0.0, max_grad_norm=0.01, poisson_sampling=False)
    x, y = torch.randn(1, 5) * 100, torch.tensor([1])
    F.cross_entropy(model(x), y).backward()
    assert opt.tracker.last_sq_norms.sqrt().item() > 0.01
    total = torch.cat([s.flatten() for s in opt.tracker.summed.values()]).norm()
    assert total <= 0.01 * (1 + 1e-6)


def test_non_finite_loss_raises_without_update():
    model, opt, _ = _setup(poisson_sampling=False)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrustlabError, match="non-finite per-sample gradient"):
        (model(torch.randn(4, 5)).sum() * float("nan")).backward()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_validator_names_unsupported_layers_and_fix():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LSTM(4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(4, 1)), batch_size=2)
    with pytest.raises(ConfigError) as err:
        make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                     target_delta=1e-5)
    assert "1 (BatchNorm2d)" in str(err.value) and "GroupNorm" in str(err.value)
    assert "3 (LSTM)" in str(err.value) and "DPLSTM" in str(err.value)

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(ConfigError, match=r"custom \(Custom\).*register_kernel"):
        make_private(nn.ModuleDict({"custom": Custom()}), opt, loader, noise_multiplier=1.0,
                     max_grad_norm=1.0, target_delta=1e-5)
    fixed = fix(model)
    assert isinstance(fixed[1], nn.GroupNorm) and type(fixed[3]).__name__ == "DPLSTM"
    with pytest.raises(ConfigError, match=r"0 \(EmbeddingBag\).*mode='sum' or mode='mean'"):
        make_private(nn.Sequential(nn.EmbeddingBag(5, 3, mode="max")), opt, loader,
                     noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5)
    with pytest.raises(ConfigError, match=r"0 \(InstanceNorm2d\).*track_running_stats=False"):
        make_private(nn.Sequential(nn.InstanceNorm2d(4, track_running_stats=True)), opt, loader,
                     noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5)
    # old-style weight_norm: the Linear's weight is made from weight_g and weight_v by a hook,
    # and the Linear kernel computes no gradient for them (they would get noise only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm is deprecated
        normed = nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 3)))
    with pytest.raises(ConfigError, match=r"0 \(Linear\): its parameters \['weight_g', "
                                          r"'weight_v'\] are not ones.*remove_weight_norm"):
        make_private(normed, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                     target_delta=1e-5)
    # new-style parametrizations: the message pointed to register_vmap_kernel, which crashes
    for parametrized in (nn.utils.parametrizations.weight_norm,
                         nn.utils.parametrizations.orthogonal):
        with pytest.raises(ConfigError, match=r"0.parametrizations.weight \(ParametrizationList"
                                              r"\).*remove_parametrizations"):
            make_private(nn.Sequential(parametrized(nn.Linear(4, 4))), opt, loader,
                         noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5)


def test_a_parameter_used_outside_its_layer_is_an_error():
    """An output projection written as h @ embed.weight.T: autograd would give embed.weight a
    batch gradient the clipping never saw, and step() would overwrite it without a word."""
    torch.manual_seed(0)

    class DirectTie(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(7, 4)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return (self.embed(idx) @ self.embed.weight.T).mean(1)

    model = DirectTie()
    loader = DataLoader(TensorDataset(torch.randint(0, 7, (8, 3)), torch.randint(0, 7, (8,))),
                        batch_size=4)
    model, opt, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                                 noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5,
                                 poisson_sampling=False)
    x, y = next(iter(loader))
    with pytest.raises(TrustlabError, match="'embed.weight' got a gradient from outside"):
        F.cross_entropy(model(x), y).backward()
    assert not opt.tracker.records
    opt.detach()  # the plain model trains normally again
    F.cross_entropy(model(x), y).backward()
    assert model.embed.weight.grad is not None


def test_a_private_model_cannot_be_made_private_again_until_detached():
    model, opt, loader = _setup()
    with pytest.raises(ConfigError, match="already private"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                     noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5)
    copy_of_private = copy.deepcopy(model)  # the plain classes, not tracked
    assert type(copy_of_private[0]) is nn.Linear
    opt.detach()
    for fresh in (model, copy_of_private):
        make_private(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), loader,
                     noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5)
        assert type(fresh[0]).__mro__[1] is nn.Linear  # tapped once, not a tap of a tap


def test_unreachable_target_epsilon_is_a_clear_error():
    with pytest.raises(ConfigError, match="unreachable"):
        _setup(noise_multiplier=None, target_epsilon=1e-6, epochs=1000)


def test_calibrated_noise_meets_target_epsilon():
    model, opt, loader = _setup(noise_multiplier=None, target_epsilon=2.0, epochs=5)
    steps = int(5 / loader.sample_rate)
    eps = compute_epsilon(opt.noise_multiplier, loader.sample_rate, steps, 1e-5)
    assert 1.95 <= eps <= 2.0


def test_detach_twice_leaves_the_layers_as_they_were():
    model, opt, _ = _setup()
    opt.detach()
    opt.detach()  # used to make each layer an nn.Module (the tapped class's second base)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear


class _Positions(nn.Module):
    """Tokens plus a learned position embedding, positions as GPT-style code writes them."""

    def __init__(self, expand: bool) -> None:
        super().__init__()
        self.tok, self.pos, self.head = nn.Embedding(7, 4), nn.Embedding(5, 4), nn.Linear(4, 3)
        self.expand = expand

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1])
        if self.expand:  # one row of positions per sample
            positions = positions.expand(idx.shape[0], -1)
        return self.head((self.tok(idx) + self.pos(positions)).mean(1))


class _TimeFirst(nn.Module):
    """A Linear run on the time-first view of a (B, T, ·) batch: its rows are time steps."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.enc(x.transpose(0, 1)))).mean(0)


@pytest.mark.parametrize("model", [_Positions(expand=False), _TimeFirst()],
                         ids=["positions_without_batch", "time_first"])
def test_a_layer_input_whose_rows_are_not_samples_is_refused(model):
    """Rows of a layer input that are not the model's samples would each be clipped as a
    sample: no sample's share bounded. Refused, naming the layer; nothing recorded."""
    torch.manual_seed(0)
    x = torch.randint(0, 7, (3, 5)) if isinstance(model, _Positions) else torch.randn(3, 5, 4)
    data = TensorDataset(x, torch.randint(0, 3, (3,)))
    model, opt, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                 DataLoader(data, batch_size=3), noise_multiplier=1.0,
                                 max_grad_norm=1.0, target_delta=1e-5, poisson_sampling=False)
    with pytest.raises(TrustlabError, match=r"layer '(pos|head)' got an input whose first dim "
                                            r"is 5, but the model's input batch is 3"):
        F.cross_entropy(model(x), data.tensors[1]).backward()
    assert not opt.tracker.records and not opt.tracker.summed


def test_positions_expanded_over_the_batch_match_the_reference():
    from dp_reference import assert_close_sums, engine_clipped_sum, reference_clipped_sum
    torch.manual_seed(0)
    model, x, y = _Positions(expand=True).double(), torch.randint(0, 7, (3, 5)), \
        torch.randint(0, 3, (3,))
    want, _ = reference_clipped_sum(model, x, y, F.cross_entropy, 0.5)
    got, _ = engine_clipped_sum(model, x, y, F.cross_entropy, 0.5)
    assert_close_sums(got, want)


def test_a_batch_second_root_module_is_checked_on_its_batch_dim():
    """A DPLSTM(batch_first=False) given to make_private itself: its input's dim 1 is the
    batch, and its cells see the batch first (no false refusal)."""
    from trustlab.privacy import DPLSTM
    torch.manual_seed(0)
    lstm = DPLSTM(3, 4)
    data = TensorDataset(torch.randn(6, 5, 3))
    lstm, opt, _ = make_private(lstm, torch.optim.SGD(lstm.parameters(), lr=0.1),
                                DataLoader(data, batch_size=6), noise_multiplier=1.0,
                                max_grad_norm=1.0, target_delta=1e-5, poisson_sampling=False)
    out, _ = lstm(torch.randn(5, 6, 3))  # (T=5, B=6, ·)
    out.pow(2).sum().backward()
    assert opt.tracker.samples == 6


def test_an_optimizer_parameter_outside_the_model_is_refused():
    """A learnable loss temperature kept beside the model gets no per-sample gradient: every
    step would have set it to noise alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 2))
    temperature = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": model.parameters()}, {"params": [temperature]}], lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(8, 5), torch.randint(0, 2, (8,))),
                        batch_size=4)
    with pytest.raises(ConfigError, match=r"not in the model: param_groups\[1\]\[0\] "
                                          r"\(shape \(1,\)\)"):
        make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                     target_delta=1e-5)
    assert type(model[0]) is nn.Linear  # refused before anything was tapped
    temperature.requires_grad_(False)  # frozen: nothing to train, accepted
    make_private(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                 target_delta=1e-5)


def test_moving_the_model_after_make_private_still_records():
    """model.double() (or .to(device)) after make_private gives the parameters new gradient
    accumulators; every pass used to look like an input-gradient pass: noise-only steps."""
    def train(convert_after: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        if not convert_after:
            model.double()
        data = TensorDataset(torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,)))
        model, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.5),
                                          DataLoader(data, batch_size=8), noise_multiplier=0.0,
                                          max_grad_norm=1.0, target_delta=1e-5,
                                          poisson_sampling=False)
        if convert_after:
            model.double()
        train_steps(model, opt, loader)
        assert opt.samples_seen == 16
        return [p.detach() for p in model.parameters()]

    for after, before in zip(train(convert_after=True), train(convert_after=False)):
        torch.testing.assert_close(after, before, rtol=0, atol=1e-12)


@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
def test_a_noise_or_bound_schedule_changes_the_noise_and_the_accounting(clipping):
    """Opacus's schedulers set optimizer.noise_multiplier / max_grad_norm: the noise added
    must follow what the accountant is told (it stayed at the first σ: ε under-reported)."""
    model, opt, _ = _setup(noise_multiplier=0.5, max_grad_norm=1.0, poisson_sampling=False,
                           clipping=clipping)
    opt.noise_multiplier, opt.max_grad_norm = 2.0, 0.6
    draws = []
    for _ in range(40):
        opt.zero_grad()
        opt.step()
        draws += [p.grad.flatten() * opt.expected_batch_size for p in model.parameters()]
    noise = torch.cat(draws)
    assert abs(noise.std().item() / (2.0 * 0.6) - 1) < 4 / (2 * noise.numel()) ** 0.5
    assert opt.accountant.history[-1][0] == 2.0
    if clipping == "per_layer":  # each group's bound scaled alike: their norm is the new C
        bounds = opt.tracker.layer_bounds.values()
        assert abs(sum(b * b for b in bounds) ** 0.5 - 0.6) < 1e-12


def test_stepping_parameters_no_layer_records_is_refused():
    """A layer frozen when make_private ran and unfrozen later, or a parameter group added
    after: no per-sample gradients, so the step would set them to noise alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    model[2].bias.requires_grad_(False)
    data = TensorDataset(torch.randn(8, 5), torch.randint(0, 2, (8,)))
    model, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                      DataLoader(data, batch_size=4), noise_multiplier=1.0,
                                      max_grad_norm=1.0, target_delta=1e-5,
                                      poisson_sampling=False)
    model[2].bias.requires_grad_(True)  # its layer is tapped: its records cover it
    train_steps(model, opt, loader)
    model[0].requires_grad_(True)  # its layer was not tapped
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrustlabError, match=r"parameters 0.weight, 0.bias are trainable, but "
                                            r"no layer records"):
        train_steps(model, opt, loader)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_the_expected_batch_size_is_over_a_subset_samplers_split():
    from torch.utils.data import SubsetRandomSampler
    data = TensorDataset(torch.randn(100, 5), torch.randint(0, 2, (100,)))
    loader = DataLoader(data, batch_size=5, sampler=SubsetRandomSampler(range(25)))
    for poisson in (True, False):
        model = nn.Linear(5, 2)
        _, opt, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                                 noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5,
                                 poisson_sampling=poisson)
        assert opt.expected_batch_size == pytest.approx(5.0)  # q·N = 1/5 · 25, not 1/5 · 100


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([(torch.randn(5), 0)] * 4)


@pytest.mark.parametrize("loader, problem", [
    (DataLoader(TensorDataset(torch.randn(4, 8, 5), torch.randint(0, 2, (4, 8))),
                batch_size=None), "batch_size=None"),
    (DataLoader(_Stream()), "map-style dataset"),
], ids=["pre_batched", "iterable"])
def test_loaders_without_a_known_sampling_rate_are_refused(loader, problem):
    model = nn.Linear(5, 2)
    with pytest.raises(ConfigError, match=problem):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                     noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5)


def test_a_private_model_saves_and_loads_whole():
    """torch.save of the model itself (not its state_dict) failed: the tapped classes exist
    only in the process that made them. It saves as the plain classes."""
    model, _, _ = _setup()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # our own file, not an untrusted one
    assert [type(m) for m in loaded] == [nn.Linear, nn.ReLU, nn.Linear]
    x = torch.randn(3, 5)
    torch.testing.assert_close(loaded(x), model(x))


def test_the_optimizer_cannot_be_copied_or_pickled():
    """A copy would be bound to no taps and would spend the accountant's budget unreported."""
    _, opt, _ = _setup()
    with pytest.raises(TrustlabError, match="cannot be copied or pickled.*state_dict"):
        copy.deepcopy(opt)
    with pytest.raises(TrustlabError, match="cannot be copied or pickled"):
        torch.save(opt, io.BytesIO())


def test_step_and_state_dict_hooks_run_as_on_any_optimizer():
    model, opt, _ = _setup(noise_multiplier=0.0, poisson_sampling=False)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o.steps)))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o.steps)))
    opt.register_state_dict_post_hook(lambda o, state: {**state, "note": "kept"})
    opt.register_load_state_dict_pre_hook(
        lambda o, state: {k: v for k, v in state.items() if k != "note"})
    F.cross_entropy(model(torch.randn(4, 5)), torch.randint(0, 2, (4,))).backward()
    opt.step()
    assert calls == [("pre", 0), ("post", 1)]
    state = opt.state_dict()
    assert state["note"] == "kept"
    opt.load_state_dict(state)  # the pre hook took the note out again
    assert opt.steps == 1


def test_parameters_of_two_dtypes_get_noisy_gradients_of_their_own_dtype():
    """One flat noise buffer of the first parameter's dtype could not hold a float64 layer's
    gradient after a float32 one's (the step crashed)."""
    class TwoDtypes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(5, 4), nn.Linear(4, 2).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(self.first(x).relu().double())

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 2, (16,))
    model = TwoDtypes()
    grads = {n: g.double() for n, g in per_sample_grads(model, x, y, F.cross_entropy).items()}
    factors = (0.5 / torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)).clamp(max=1)
    reference = {n: torch.einsum("b,b...->...", factors, g) for n, g in grads.items()}
    data = DataLoader(TensorDataset(x, y), batch_size=16)
    for sigma in (0.0, 1.0):
        private = copy.deepcopy(model)
        private, opt, _ = make_private(private, torch.optim.SGD(private.parameters(), lr=0.1),
                                       data, noise_multiplier=sigma, max_grad_norm=0.5,
                                       target_delta=1e-5, poisson_sampling=False)
        F.cross_entropy(private(x), y).backward()
        opt.step()
        assert all(p.grad.dtype == p.dtype for p in private.parameters())
        if sigma == 0:
            assert_close_sums({n: p.grad.double() * 16 for n, p in private.named_parameters()},
                              reference)
