"""The DP optimizer: noise added once per step, the average over the expected batch size,
accounting, and the skip signal for logical batches run as physical ones."""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
from typing import Callable

import torch
from torch import Tensor

from trustlab.errors import ConfigError, TrustlabError
from trustlab.kernels import draw_key, noisy_write, step_key
from trustlab.privacy.accounting import PrivacyFacts, make_accountant
from trustlab.privacy.adaptive import AdaptiveClipping
from trustlab.privacy.sampling import ReceivedBatches, Sampling
from trustlab.privacy.secure import SecureRandom
from trustlab.privacy.tracker import GradSampleTracker


class DPOptimizer(torch.optim.Optimizer):
    """Wraps an optimizer: ``step`` writes noisy averaged clipped gradients, then steps it."""

    def __init__(self, optimizer: torch.optim.Optimizer, tracker: GradSampleTracker, *,
                 noise_multiplier: float, expected_batch_size: float, sample_rate: float,
                 accountant: str = "rdp", noise_seed: int | None = None,
                 reduce: Callable[[list[Tensor], list[float]],
                                  tuple[list[Tensor], list[float]]] | None = None,
                 secure_random: SecureRandom | None = None,
                 adaptive: AdaptiveClipping | None = None,
                 received: ReceivedBatches | None = None,
                 sampling: Sampling = None) -> None:
        self.original_optimizer = optimizer
        self.tracker = tracker
        self.adaptive = adaptive
        self.noise_multiplier = noise_multiplier  # what the accountant is told (a property)
        self.expected_batch_size = float(expected_batch_size)
        self.sample_rate = float(sample_rate)
        self.accountant_name = accountant
        self.accountant = make_accountant(accountant)
        self.secure_random = secure_random  # secure_mode's noise source, else the generator's
        self.generator: torch.Generator | None = None
        # the Philox key whose per-step keys the noise kernels use: the generator's first draw
        # (secure mode: none), saved with it, and how many step keys it has given (counted
        # apart from the steps: a step that fails after its noise is written still used one)
        self.noise_key: int | None = None
        self.noise_keys_used = 0
        if secure_random is None:
            self.generator = torch.Generator(device=self._device())
            self.generator.manual_seed(secrets.randbits(63) if noise_seed is None else noise_seed)
            self.noise_key = draw_key(self.generator, self.generator.device)
        self.reduce = reduce
        self.received = received  # from make_private's loader (None: not Poisson)
        self.sampling = sampling  # the Poisson masks' source, saved with the noise's
        self.steps = 0
        self.samples_seen = 0  # over all steps (and all ranks when distributed)
        self._skip_next_step = False
        self._accumulating = False  # the last step() was skipped: keep the clipped sums
        self._add_hook_tables()

    def _add_hook_tables(self) -> None:
        """What ``Optimizer.__init__`` sets up besides the parameters (those stay the wrapped
        optimizer's): the hook tables of ``register_step_pre_hook`` and its kin. :meth:`step`
        runs the step hooks itself, on real steps only (not on a logical batch's parts)."""
        for kind in ("step_pre", "step_post", "state_dict_pre", "state_dict_post",
                     "load_state_dict_pre", "load_state_dict_post"):
            setattr(self, f"_optimizer_{kind}_hooks", OrderedDict())

    def __getstate__(self) -> dict:
        """Refused: a copy (``copy.deepcopy``, pickling) would not be bound to the model's taps,
        and two optimizers spending one accountant's budget would under-report ε."""
        raise TrustlabError(
            "a DPOptimizer cannot be copied or pickled: it is bound to the per-sample taps of its "
            "model and to its privacy accountant. Save optimizer.state_dict() (and the model's "
            "state_dict); to resume, call make_private on the model and optimizer again and load "
            "it with load_state_dict")

    def _device(self) -> torch.device:
        return next(p.device for g in self.original_optimizer.param_groups for p in g["params"])

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        return self.original_optimizer.param_groups

    @property
    def state(self) -> dict:  # type: ignore[override]
        return self.original_optimizer.state

    @property
    def defaults(self) -> dict:  # type: ignore[override]
        return self.original_optimizer.defaults

    @property
    def noise_multiplier(self) -> float:
        """σ, what the accountant is told each step; settable (a noise schedule, as Opacus's
        ``opacus.schedulers`` do): the noise added follows."""
        return self._noise_multiplier

    @noise_multiplier.setter
    def noise_multiplier(self, value: float) -> None:
        self._noise_multiplier = float(value)
        # the gradient's own multiplier: σ, or more when the clipped count also gets noise
        self.gradient_noise_multiplier = (
            self._noise_multiplier if self.adaptive is None
            else self.adaptive.gradient_noise_multiplier(self._noise_multiplier))

    @property
    def max_grad_norm(self) -> float:
        """The clipping bound C (the noise's scale is σ·C); settable (a bound schedule)."""
        return self.tracker.max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float) -> None:
        self.tracker.set_max_grad_norm(value)

    def params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget gradients and clipped sums accumulated since the last step (the sums are
        kept while a logical batch is still running, see :meth:`signal_skip_step`)."""
        self.original_optimizer.zero_grad(set_to_none)
        if not self._accumulating:
            self.tracker.reset()

    def signal_skip_step(self, do_skip: bool = True) -> None:
        """Make the next ``step()`` only accumulate: its physical batch does not end the
        logical one (what :class:`~trustlab.privacy.BatchMemoryManager` signals)."""
        self._skip_next_step = do_skip

    def discard_accumulated(self) -> None:
        """Forget the clipped sums of a logical batch that will not be stepped (a loop over
        physical batches left early)."""
        self._skip_next_step = self._accumulating = False
        self.tracker.reset()

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One DP step over everything accumulated since the last step (an empty batch
        included: it still adds noise and is still accounted), or, after
        ``signal_skip_step()``, nothing but keeping the clipped sums for the next one."""
        loss = None
        if not self._skip_next_step:
            for pre_hook in list(self._optimizer_step_pre_hooks.values()):
                pre_hook(self, (), {})
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.tracker.flush()
        self._accumulating, self._skip_next_step = self._skip_next_step, False
        if self._accumulating:
            return loss
        params = self.params()
        self._check_tracked(params)
        self._check_received()
        summed = self.tracker.summed
        sums = [summed[p] if p in summed else torch.zeros_like(p) for p in params]
        counts = [float(self.tracker.samples), float(self.tracker.unclipped)]
        if self.reduce is not None:  # over all ranks: every rank sees the same counts
            sums, counts = self.reduce(sums, counts)
        samples, unclipped = round(counts[0]), counts[1]
        self._check_sample_count(self.samples_seen + samples)
        self.samples_seen += samples
        std = self.gradient_noise_multiplier * self.max_grad_norm
        draw = self.secure_random.normal if self.secure_random is not None else None
        # the sums are this step's own (the flush's results, reset below): written over
        for p, grad in zip(params, noisy_write(sums, std, self.expected_batch_size,
                                               self.generator, draw, in_place=True,
                                               key=self._step_noise_key())):
            p.grad = grad
        self.tracker.reset()
        # the noisy gradients are out (in p.grad): accounted before the wrapped step, which
        # may fail and leave them there
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1
        self.original_optimizer.step()
        if self.adaptive is not None:
            self.max_grad_norm = self.adaptive.next_bound(
                self.max_grad_norm, unclipped, samples, self._count_noise(),
                self.expected_batch_size)
        for post_hook in list(self._optimizer_step_post_hooks.values()):
            post_hook(self, (), {})
        return loss

    def _step_noise_key(self) -> int | None:
        """A Philox key never used before, from :attr:`noise_key` and the count of keys used,
        taken before any noise is written (None in secure mode, whose noise has its own
        source): a step retried after a failure (the wrapped optimizer raising, say) draws new
        noise, where the same key would have let the two gradients' difference give the
        clipped sum without noise."""
        if self.generator is None:
            return None
        if self.noise_key is None:  # a state saved before the key was kept
            self.noise_key = draw_key(self.generator, self.generator.device)
        self.noise_keys_used += 1
        return step_key(self.noise_key, self.noise_keys_used - 1)

    def _check_tracked(self, params: list[Tensor]) -> None:
        """Refuse to step trainable parameters no layer records per-sample gradients for:
        frozen when make_private ran and unfrozen since, or added to the optimizer after; the
        step would set them to noise alone."""
        untracked = [p for p in params if p not in self.tracker.tracked]
        if not untracked:
            return
        names = {p: n for n, p in self.tracker.module.named_parameters()}
        listed = ", ".join(names.get(p, f"a tensor of shape {tuple(p.shape)}") for p in untracked)
        raise TrustlabError(
            f"parameters {listed} are trainable, but no layer records their per-sample "
            "gradients: they were frozen when make_private ran, or added to the optimizer "
            "after it. The step would set them to noise alone; no update was applied. Set "
            "requires_grad and the optimizer's parameters before make_private (detach() this "
            "optimizer and call it again)")

    def _check_received(self) -> None:
        """Refuse a step (with Poisson sampling) unless its clipped rows are the samples of a
        batch received from make_private's loader and not stepped yet: the accountant counts
        each step as one fresh Poisson batch with each sample's share bounded by C, which
        several steps on one batch, batches from elsewhere, a sample clipped in several rows,
        or rows that are not samples would break."""
        if self.received is None:
            return
        if not self.received.unstepped:
            raise TrustlabError(
                f"step() without a new batch from the data loader make_private returned (step "
                f"{self.steps + 1}; {self.received.count} batches received from it, all "
                "stepped): the accountant counts each step as one fresh Poisson batch, so "
                "several steps on one batch, or batches from another loader (the one given to "
                "make_private instead of the one it returned), would spend more ε than "
                "reported. No update was applied. Draw one batch per step from the returned "
                "loader")
        if not self.received.take(self.tracker.samples):
            held = ", ".join(map(str, self.received.unstepped))
            raise TrustlabError(
                f"{self.tracker.samples} rows were clipped as samples for this step, but the "
                f"batches received from the data loader and not stepped yet hold {held} "
                "samples: the clipped rows are not one batch's samples. More rows: a sample "
                "went through the model in several rows, each clipped to max_grad_norm on its "
                "own (views of a batch concatenated: run the model on each view and add the "
                "losses; several backward passes on one batch: add the losses and call "
                "backward once; a pass for another optimizer, such as a GAN's generator: call "
                "this optimizer's zero_grad() before the batch's forward; several loader "
                "batches per step: use BatchMemoryManager). Fewer: rows that are not samples "
                "(a sequence-first input: batch_first=True) or samples left out. No update was "
                "applied")

    def _count_noise(self) -> float:
        """One N(0, σ_b²) draw for adaptive clipping's count, from the noise's own source."""
        std = self.adaptive.count_std  # type: ignore[union-attr]
        if self.secure_random is not None:
            return float(self.secure_random.normal(1, std))
        assert self.generator is not None
        return float(torch.randn(1, generator=self.generator,
                                 device=self.generator.device)) * std

    def _check_sample_count(self, seen: int) -> None:
        """Refuse a step when the samples so far exceed what one loader batch per step gives
        by more than chance allows (10 s.d. of the Poisson total, plus 10): steps spanning
        several loader batches make the sampling rate, and so ε, wrong."""
        expected = self.expected_batch_size * (self.steps + 1)
        if seen <= expected + 10 * math.sqrt(expected) + 10:
            return
        raise TrustlabError(
            f"{seen} samples in {self.steps + 1} steps, where one batch per step of the data "
            f"loader given to make_private (sampling rate {self.sample_rate:.4g}) gives about "
            f"{expected:.0f}: a step spans several loader batches, so the accountant's ε would "
            "be too low. No update was applied. For logical batches larger than memory give "
            "make_private the logical batch size and use trustlab.privacy.BatchMemoryManager")

    def epsilon(self, delta: float) -> float:
        return float(self.accountant.get_epsilon(delta=delta)) if self.steps else 0.0

    def privacy_facts(self, delta: float) -> PrivacyFacts:
        return PrivacyFacts(self.noise_multiplier, self.sample_rate, self.steps,
                            self.max_grad_norm, self.epsilon(delta), delta, self.accountant_name,
                            secure_mode=self.secure_random is not None,
                            clipping="adaptive" if self.adaptive else self.tracker.clipping)

    def state_dict(self) -> dict:
        """The wrapped optimizer's state and the privacy state (accountant history, steps,
        samples seen, the noise key with the count of its step keys used, and the positions of
        the noise's and the Poisson masks' generators): a resumed run goes on spending ε and drawing fresh noise and batches
        instead of replaying them. In secure mode the noise key is not saved
        (``noise_generator`` and ``noise_key`` are None): a resumed run draws a new key.
        Loadable with ``weights_only=True``."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        generator = None if self.generator is None else self.generator.get_state()
        sampling = (self.sampling.get_state() if isinstance(self.sampling, torch.Generator)
                    else None)
        state = {"optimizer": self.original_optimizer.state_dict(),
                 "privacy": {"accountant": dict(self.accountant.state_dict()),
                             "steps": self.steps, "samples_seen": self.samples_seen,
                             "max_grad_norm": self.max_grad_norm,
                             "noise_generator": generator, "noise_key": self.noise_key,
                             "noise_keys_used": self.noise_keys_used,
                             "sampling_generator": sampling}}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            state = post_hook(self, state) or state
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume from :meth:`state_dict`; the accountant must be the same kind."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = pre_hook(self, state_dict) or state_dict
        if not isinstance(state_dict, dict) or set(state_dict) != {"optimizer", "privacy"}:
            raise ConfigError(
                "not a DPOptimizer state_dict (no privacy state): resuming from it would restart "
                "ε at 0 and, with a fixed noise_seed, replay earlier noise. To start DP training "
                "from a non-private optimizer's state, load it into optimizer.original_optimizer")
        privacy = state_dict["privacy"]
        saved, ours = privacy["accountant"].get("mechanism"), self.accountant.mechanism()
        if saved != ours:
            raise ConfigError(f"the state_dict's accountant is {saved!r}, this optimizer's "
                              f"{ours!r}: give make_private the same accountant= to resume")
        generator = privacy["noise_generator"]
        if generator is None and self.generator is not None:
            raise ConfigError("the state_dict comes from a secure_mode run, whose noise key is "
                              "not saved: resume it with make_private(..., secure_mode=True)")
        self.original_optimizer.load_state_dict(state_dict["optimizer"])
        self.accountant.load_state_dict(privacy["accountant"])
        self.steps, self.samples_seen = int(privacy["steps"]), int(privacy["samples_seen"])
        self.max_grad_norm = float(privacy.get("max_grad_norm", self.max_grad_norm))
        if self.generator is not None:
            self.generator.set_state(generator)
            self.noise_key = privacy.get("noise_key")  # absent (older states): drawn afresh
            self.noise_keys_used = int(privacy.get("noise_keys_used", 0))
        sampling = privacy.get("sampling_generator")
        if sampling is not None and isinstance(self.sampling, torch.Generator):
            self.sampling.set_state(sampling)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def detach(self) -> None:
        """Remove the taps: the module's layers run their plain forward again."""
        self.tracker.detach()
