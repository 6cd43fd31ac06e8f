"""One GAN training loop for all three families, with or without DP on the critic.

The critic is the only network that sees real patches; with DP it is updated only through the
Gaussian mechanism on per-unit (patient or patch) gradients. The generator learns only from the
critic's scores of fakes, which is post-processing of a DP critic: it needs no accounting.

Randomness: the ``seed`` drives weight initialisation, latents and interpolation weights. The
randomness DP relies on -- which units are sampled and the Gaussian noise -- comes from the OS
(``os.urandom``) and is never derived from a seed a coordinator could know: an attacker who knows
the noise can subtract it, and one who knows the sampled batch loses the amplification-by-sampling
that the accountant assumes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from agent.dp.critic_loss import PENALTY_POINTS, CriticObjective, batch_critic_losses, public_fake_losses
from agent.dp.mechanism import make_dp_optimizer, private_step
from agent.dp.per_sample_grads import fast_per_sample_grads
from agent.dp.sampling import UnitSampler
from agent.models.architectures import GanSpec
from agent.models.generators import ConvGenerator
from agent.models.weights import build_pair, load_arrays, pair_to_arrays, CRITIC_PREFIX, GENERATOR_PREFIX
from protocols.errors import BadInputError
from protocols.tasks import PrivacyUnit

log = logging.getLogger(__name__)

LABEL_CHANNEL = 1  # channel 1 of a generated patch is the vessel label (channel 0 the image)


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Optimisation settings (not privacy settings)."""

    n_critic: int = 5  # critic iterations per generator step (WGAN-GP default)
    critic_lr: float = 2e-4
    generator_lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.9
    gp_weight: float = 10.0  # lambda of the gradient penalty
    patches_per_patient: int = 8  # cap on a sampled patient's patches per step (patient unit)
    batch_size: int = 64  # non-DP batch size; DP batches are Poisson with this expectation in patches
    # Initial pre-tanh bias of the generator's label channel (None keeps the default init). Negative
    # values start the label channel at background; a data-free choice, so it costs no privacy.
    generator_label_bias: float | None = None
    # Decay of an exponential moving average (Polyak averaging) of the generator's weights, or None
    # (off). Post-processing of the generator, which only ever sees the (DP) critic: no privacy cost.
    # See GanTrainer for what it changes (only what is sampled locally).
    generator_ema: float | None = None
    # Learning-rate decay of BOTH optimisers, or None (constant lr). "linear" or "cosine" from the
    # base lr down to 0 over the last (1 - lr_decay_start) of the planned critic steps; needs the
    # trainer's ``total_steps``. A function of the step count only (data-free), so it costs no privacy,
    # and it is recomputed from the checkpointed step count, so a resumed run gets the same lr.
    lr_decay: str | None = None
    lr_decay_start: float = 0.5  # fraction of the planned critic steps after which the decay begins
    # DP only: take the gradient of the critic loss's fake-sample term (D(x~), or softplus(D(x~)))
    # outside DP-SGD, exactly and without noise, instead of clipping and noising it with each real
    # patch. That term is a function of the generator and the critic only -- both outputs of earlier
    # DP steps -- and of data-free latents, so adding its gradient is post-processing (no privacy
    # cost); the clipping budget C then goes to the real and penalty terms alone. See
    # GanTrainer._public_grads for why its batch size and weight are constants. Off by default:
    # in the 7 Dec benchmark runs it did worse than clipping each real-minus-fake gradient together
    # (benchmarks/results/dpgan/README.md, "fourth batch").
    public_fake_term: bool = False
    # Where the gradient penalty is evaluated: "interpolates" (WGAN-GP as published) or "fakes" (a
    # one-sided variant). On the fakes it holds no private data, so with public_fake_term it leaves
    # DP-SGD too and the clipped, noised part of a step is the real-score term alone.
    gp_at: str = "interpolates"
    # With public_fake_term: bound on the norm of the public gradient as a whole (None: unbounded).
    # Unbounded, the exact fake term outweighed the clipped real term and the critic diverged in the
    # 7 Dec runs (benchmarks/results/dpgan); a data-free bound of the order of C keeps them balanced.
    public_fake_clip: float | None = None
    # DP only: take the gradient penalty outside DP-SGD, exactly and without noise, while the fake
    # term D(x~) stays inside each unit's clipped real-minus-fake gradient (which keeps the two
    # adversarial terms balanced; taking the fake term out unbalanced the critic, see above). Needs
    # gp_at="fakes": the penalty is then a function of the critic, the generator and data-free
    # latents only, so adding its gradient is post-processing (no privacy cost). Batch size and
    # weight are constants as for public_fake_term (GanTrainer._public_grads). Unclipped, it weighs
    # ~20-50x more against the clipped adversarial terms than inside the fused clipped gradient
    # (benchmarks/results/dpgan/diag_penalty_share.log). Off by default: in the 7 Dec runs ("fifth
    # batch" in benchmarks/results/dpgan/README.md) it was no better than the fused step.
    public_penalty: bool = False

    def __post_init__(self) -> None:
        if self.public_penalty and self.gp_at != "fakes":
            raise BadInputError(
                f"public_penalty takes the penalty outside DP-SGD, which is private-data-free only when it is "
                f"evaluated on the fakes: it needs gp_at='fakes', got gp_at={self.gp_at!r}"
            )
        if self.public_penalty and self.public_fake_term:
            raise BadInputError(
                "public_penalty and public_fake_term together: public_fake_term with gp_at='fakes' already takes "
                "the penalty outside DP-SGD with the fake term; set only one"
            )
        if self.public_fake_clip is not None and not (math.isfinite(self.public_fake_clip) and self.public_fake_clip > 0):
            raise BadInputError(f"public_fake_clip: expected a finite bound > 0 or None, got {self.public_fake_clip!r}")
        if self.public_fake_clip is not None and not self.public_fake_term:
            raise BadInputError("public_fake_clip bounds the public fake term: it needs public_fake_term=True")
        if self.gp_at not in PENALTY_POINTS:
            raise BadInputError(f"gp_at: expected one of {PENALTY_POINTS}, got {self.gp_at!r}")
        if self.n_critic < 1 or self.batch_size < 1 or self.patches_per_patient < 1:
            raise BadInputError("n_critic, batch_size and patches_per_patient must be >= 1")
        if self.generator_label_bias is not None and not np.isfinite(self.generator_label_bias):
            raise BadInputError(f"generator_label_bias must be finite, got {self.generator_label_bias}")
        if self.generator_ema is not None and not (
            isinstance(self.generator_ema, (int, float)) and math.isfinite(self.generator_ema) and 0.0 < self.generator_ema < 1.0
        ):
            raise BadInputError(
                f"generator_ema: expected a decay strictly between 0 and 1 (e.g. 0.999) or None, got {self.generator_ema!r}"
            )
        if self.lr_decay is not None and self.lr_decay not in LR_DECAY_KINDS:
            raise BadInputError(f"lr_decay: expected one of {LR_DECAY_KINDS} or None, got {self.lr_decay!r}")
        if not (
            isinstance(self.lr_decay_start, (int, float)) and math.isfinite(self.lr_decay_start)
            and 0.0 <= self.lr_decay_start < 1.0
        ):
            raise BadInputError(
                f"lr_decay_start: expected a fraction of the run in [0, 1) (e.g. 0.5), got {self.lr_decay_start!r}"
            )


LR_DECAY_KINDS = ("linear", "cosine")


def lr_factor(kind: str | None, start_fraction: float, step: int, total_steps: int) -> float:
    """Multiplier of the base lr for the update made at critic step ``step`` (0-based) of ``total_steps``.

    1 until ``start = start_fraction * total_steps``; then "linear" falls as ``(T - step) / (T - start)``
    and "cosine" as ``0.5 * (1 + cos(pi * (step - start) / (T - start)))``, so the last update
    (step T - 1) still moves a little and anything past the plan gets 0. ``kind`` None gives 1.

    Raises
    ------
    BadInputError
        If ``kind`` is unknown or ``total_steps`` < 1.
    """
    if kind is None:
        return 1.0
    if kind not in LR_DECAY_KINDS:
        raise BadInputError(f"lr_decay: expected one of {LR_DECAY_KINDS} or None, got {kind!r}")
    if total_steps < 1:
        raise BadInputError(f"total_steps: expected >= 1 for an lr decay, got {total_steps}")
    start = start_fraction * total_steps
    if step < start:
        return 1.0
    if step >= total_steps:
        return 0.0
    progress = (step - start) / (total_steps - start)  # in [0, 1)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(decay: float, updates_done: int) -> float:
    """Decay used for the EMA update after ``updates_done`` earlier updates: ``min(decay, (1+t)/(10+t))``.

    The warm-up keeps the average from being dominated by the initial weights (t = 0 gives 0.1).
    """
    return min(decay, (1.0 + updates_done) / (10.0 + updates_done))


@dataclasses.dataclass(frozen=True)
class DPSettings:
    """The Gaussian mechanism applied to the critic."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    unit: PrivacyUnit
    expected_units: float  # sample_rate * population: Opacus' averaging denominator


def set_label_bias(generator: ConvGenerator, value: float) -> None:
    """Set the pre-tanh bias of the generator's label output channel (channel 1) to ``value``.

    Used at initialisation only: with ``value`` < 0 the untrained generator draws background
    labels (tanh(value) < 0 thresholds to 0), so training need not first learn the labels' sparsity.
    """
    bias = generator.to_patch.bias
    if bias is None:
        raise BadInputError("the generator's output layer has no bias")
    with torch.no_grad():
        bias[LABEL_CHANNEL] = value
    log.info("generator label-channel bias initialised to %g (tanh %.3f)", value, float(np.tanh(value)))


def _secret_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))


class GanTrainer:
    """Holds generator, critic and optimisers; ``critic_step``/``generator_step`` advance training.

    Parameters
    ----------
    spec:
        Architecture and patch size.
    patches:
        ``(N, 2, S, S)`` float32 in [-1, 1] (image, label).
    patient_index:
        ``(N,)`` patient number of every patch (0..P-1).
    hp:
        Optimisation settings.
    dp:
        Mechanism settings, or None for non-DP training (epsilon = infinity).
    seed:
        Seeds initialisation, latents and interpolation weights (never DP noise or sampling).
    weights:
        Optional starting weights (``generator.``/``critic.`` arrays).
    total_steps:
        Planned critic steps of the whole run; required when ``hp.lr_decay`` is set (the schedule
        is a function of ``critic_steps / total_steps``), ignored otherwise.

    Generator EMA (``hp.generator_ema``): a shadow copy of the generator, updated after every
    generator step as ``ema = d_t * ema + (1 - d_t) * generator`` with
    ``d_t = min(decay, (1 + t) / (10 + t))`` (``t`` = EMA updates done before), starting from the
    generator's initial (or given) weights. It is post-processing of the generator, so it costs no
    privacy. Decision on federated semantics: the EMA affects ONLY what is sampled locally
    (:attr:`sampling_generator`, used for utility benchmarks); :meth:`weights` -- what a federated
    round releases and FedAvg averages -- stays the raw generator, whose Adam state the next round
    continues, and a trainer built from received ``weights`` starts its EMA from them. The EMA is
    saved in :meth:`state_dict` so that a resumed run continues it exactly. Off (None) by default,
    in which case nothing changes.

    Lr decay (``hp.lr_decay``): before every critic and generator update both optimisers' lr is set
    to ``base * lr_factor(...)`` of the current ``critic_steps``. As ``critic_steps`` is in the
    checkpoint, a run resumed after a kill uses exactly the lr the uninterrupted run would have.
    Federated rounds (:mod:`agent.training.local_round`) build a fresh trainer per round and do
    not use it.
    """

    def __init__(
        self,
        spec: GanSpec,
        patches: np.ndarray | torch.Tensor,
        patient_index: np.ndarray,
        *,
        hp: Hyperparameters,
        dp: DPSettings | None,
        seed: int,
        weights: dict[str, np.ndarray] | None = None,
        device: torch.device | None = None,
        total_steps: int | None = None,
    ) -> None:
        if hp.lr_decay is not None and (total_steps is None or total_steps < 1):
            raise BadInputError(
                f"hp.lr_decay={hp.lr_decay!r} needs the planned number of critic steps: pass total_steps >= 1, "
                f"got {total_steps!r}"
            )
        self.total_steps = total_steps
        self.device = device or torch.device("cpu")
        data = torch.as_tensor(np.asarray(patches), dtype=torch.float32)
        if data.dim() != 4 or data.shape[1] != 2 or data.shape[2:] != (spec.patch_size, spec.patch_size):
            raise BadInputError(
                f"patches: expected (N, 2, {spec.patch_size}, {spec.patch_size}) for patch_size {spec.patch_size}, "
                f"got {tuple(data.shape)}"
            )
        if len(patient_index) != data.shape[0]:
            raise BadInputError(f"patient_index has {len(patient_index)} entries for {data.shape[0]} patches")
        self.spec = spec
        self.hp = hp
        self.dp = dp
        self.data = data.to(self.device)
        self.objective = CriticObjective(spec.architecture.uses_gradient_penalty, hp.gp_weight, penalty_at=hp.gp_at)
        if hp.public_penalty and not self.objective.gradient_penalty:
            raise BadInputError(f"public_penalty: the {spec.architecture.value} critic loss has no gradient penalty")
        generator, critic = build_pair(spec, seed=seed)
        if weights is not None:
            load_arrays(generator, weights, GENERATOR_PREFIX)
            load_arrays(critic, weights, CRITIC_PREFIX)
            # Averaged (federated) power-iteration vectors are no longer unit vectors: re-normalise
            # them on the new weights before sigma = u^T W v is used (data-free, no privacy cost).
            critic.update_spectral_vectors(iterations=3)
        elif hp.generator_label_bias is not None:
            set_label_bias(generator, hp.generator_label_bias)
        self.generator = generator.to(self.device)
        self.critic = critic.to(self.device)
        self.generator_ema: ConvGenerator | None = None
        self.ema_updates = 0
        if hp.generator_ema is not None:
            self.generator_ema = copy.deepcopy(self.generator)
            self.generator_ema.requires_grad_(False)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        # Draws whose COUNT is the private batch size (a DP step's paired fakes and interpolation
        # weights) come from OS randomness under DP: from the seeded stream they would shift every
        # later generator-step latent by an amount that depends on who was sampled, and the generator
        # step is not noised. The seeded stream then advances by data-independent amounts only.
        self.batch_rng = self.rng if dp is None else _secret_generator(self.device)
        betas = (hp.beta1, hp.beta2)
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=hp.generator_lr, betas=betas)
        critic_opt = torch.optim.Adam(self.critic.parameters(), lr=hp.critic_lr, betas=betas)
        if dp is None:
            self.c_opt: torch.optim.Optimizer = critic_opt
            self.sampler = None
        else:
            self.c_opt = make_dp_optimizer(
                critic_opt,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
                expected_units=dp.expected_units,
                generator=_secret_generator(self.device),
            )
            self.sampler = UnitSampler(
                np.asarray(patient_index),
                unit=dp.unit,
                sample_rate=dp.sample_rate,
                patches_per_patient=hp.patches_per_patient,
                generator=_secret_generator(torch.device("cpu")),
            )
        self.critic_steps = 0
        self.generator_steps = 0

    # -- steps --------------------------------------------------------------------------------
    def lr_factor_at(self, step: int) -> float:
        """The lr multiplier of an update made at critic step ``step`` (1 without decay)."""
        if self.hp.lr_decay is None or self.total_steps is None:
            return 1.0
        return lr_factor(self.hp.lr_decay, self.hp.lr_decay_start, step, self.total_steps)

    def _apply_lr(self, optimizer: torch.optim.Optimizer, base_lr: float, step: int) -> None:
        # Set (not scale) the lr every time, so it never depends on what a loaded optimiser state held.
        if self.hp.lr_decay is None:
            return
        lr = base_lr * self.lr_factor_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def _fakes(self, n: int, rng: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.generator(self.generator.sample_latents(max(n, 2), rng or self.rng, self.device))[:n]

    def _public_grads(self) -> dict[str, torch.Tensor]:
        """Gradient of the critic loss's fake-sample term (and of the penalty, when ``hp.gp_at`` is
        "fakes") for a DP step with ``hp.public_fake_term``; of the penalty on the fakes alone with
        ``hp.public_penalty``.

        The mean over ``hp.batch_size`` fresh fakes, weighted by the patches a drawn unit contributes
        at most (``hp.patches_per_patient`` for the patient unit, 1 for the image unit): the weight the
        paired fakes had inside the per-unit sums, one per drawn patch, averaged over the expected
        units. Both are configuration constants on purpose: this gradient is released unnoised, so it
        must not depend on how many patches the private Poisson draw returned.
        """
        assert self.dp is not None
        fake = self._fakes(self.hp.batch_size)
        weight = self.hp.patches_per_patient if self.dp.unit == PrivacyUnit.PATIENT else 1
        loss = public_fake_losses(self.critic, fake, self.objective, fake_term=self.hp.public_fake_term).mean() * weight
        named = [(n, p) for n, p in self.critic.named_parameters() if p.requires_grad]
        # The penalty alone does not depend on the head's bias (zero gradient): hence materialize_grads.
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, materialize_grads=True)
        out = {n: g.detach() for (n, _), g in zip(named, grads)}
        if self.hp.public_fake_clip is not None:
            norm = float(torch.sqrt(sum(g.pow(2).sum() for g in out.values())))
            if norm > self.hp.public_fake_clip:
                out = {n: g * (self.hp.public_fake_clip / norm) for n, g in out.items()}
        return out

    def critic_step(self) -> float | None:
        """One critic iteration (= one accountant step under DP); returns the mean critic loss.

        Under DP the returned loss is computed on private data and is NOT differentially private:
        it is for the local log only and must not leave the site.
        """
        self._apply_lr(self.c_opt, self.hp.critic_lr, self.critic_steps)
        if self.sampler is None:
            idx = torch.randint(self.data.shape[0], (self.hp.batch_size,), generator=self.rng, device=self.device)
            real = self.data[idx]
            fake = self._fakes(real.shape[0])
            alpha = torch.rand(real.shape[0], generator=self.rng, device=self.device)
            self.c_opt.zero_grad(set_to_none=True)
            loss = batch_critic_losses(self.critic, real, fake, alpha, self.objective).mean()
            loss.backward()
            self.c_opt.step()
            value: float | None = float(loss.detach())
        else:
            batch = self.sampler.draw()
            real = self.data[batch.sample_index.to(self.device)]
            if real.shape[0] == 0:  # Poisson sampling may draw nobody: the step is pure noise
                grads = {k: p.new_zeros((0, *p.shape)) for k, p in self.critic.named_parameters()}
                value = None
            else:
                fake = self._fakes(real.shape[0], self.batch_rng)
                alpha = torch.rand(real.shape[0], generator=self.batch_rng, device=self.device)
                grads, losses = fast_per_sample_grads(
                    self.critic,
                    real,
                    fake,
                    alpha,
                    self.objective,
                    unit_index=batch.unit_index.to(self.device),
                    num_units=batch.num_units,
                    fake_term=not self.hp.public_fake_term,
                    penalty=not self.hp.public_penalty,
                )
                value = float(losses.mean())
            public = self._public_grads() if self.hp.public_fake_term or self.hp.public_penalty else None
            private_step(self.c_opt, self.critic, grads, public)  # type: ignore[arg-type]
        self.critic.update_spectral_vectors()  # data-free power iteration (no-op without SN)
        self.critic_steps += 1
        return value

    def generator_step(self) -> float:
        """One generator update from the critic's scores of fresh fakes (no real data involved)."""
        z = self.generator.sample_latents(self.hp.batch_size, self.rng, self.device)
        scores = self.critic(self.generator(z))
        loss = F.softplus(-scores).mean() if not self.objective.gradient_penalty else -scores.mean()
        params = list(self.generator.parameters())
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        # A generator step follows critic step critic_steps - 1: it shares that step's factor (so the
        # run's last generator update is not at the zero lr of step total_steps).
        self._apply_lr(self.g_opt, self.hp.generator_lr, max(self.critic_steps - 1, 0))
        self.g_opt.step()
        self.g_opt.zero_grad(set_to_none=True)
        self.generator_steps += 1
        self._update_ema()
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.generator_ema is None or self.hp.generator_ema is None:
            return
        d = ema_decay_at(self.hp.generator_ema, self.ema_updates)
        for e, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for e, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            e.copy_(b)
        self.ema_updates += 1

    @property
    def sampling_generator(self) -> ConvGenerator:
        """The generator to sample from locally: the EMA copy when enabled, else the trained generator."""
        return self.generator if self.generator_ema is None else self.generator_ema

    def train_iteration(self) -> dict[str, float]:
        """One critic step, plus a generator step every ``n_critic`` critic steps."""
        out: dict[str, float] = {}
        c = self.critic_step()
        if c is not None:
            out["critic_loss"] = c
        if self.critic_steps % self.hp.n_critic == 0:
            out["generator_loss"] = self.generator_step()
        return out

    # -- state --------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """Current (raw, never EMA) generator + critic weights as float32 arrays: what FedAvg averages."""
        return pair_to_arrays(self.generator, self.critic)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain numbers only (loadable with ``torch.load(weights_only=True)``)."""
        state: dict[str, Any] = {
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "c_opt": self.c_opt.state_dict(),
            "rng": self.rng.get_state(),
            "critic_steps": self.critic_steps,
            "generator_steps": self.generator_steps,
        }
        if self.generator_ema is not None:
            state["generator_ema"] = self.generator_ema.state_dict()
            state["ema_updates"] = self.ema_updates
        if self.hp.lr_decay is not None:
            state["lr_decay_total_steps"] = self.total_steps
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (DP noise and sampling get fresh OS randomness).

        Raises
        ------
        BadInputError
            If the state has a generator EMA and this trainer has none, or the other way round, or the
            state was saved with an lr decay planned for a different ``total_steps``.
        """
        has_ema = "generator_ema" in state
        if has_ema != (self.generator_ema is not None):
            raise BadInputError(
                "checkpoint and trainer disagree on the generator EMA: the checkpoint "
                + ("has one but hp.generator_ema is None" if has_ema else "has none but hp.generator_ema is set")
                + "; resume with the Hyperparameters the run was started with"
            )
        saved_total = state.get("lr_decay_total_steps")
        if self.hp.lr_decay is not None and saved_total is not None and int(saved_total) != self.total_steps:
            raise BadInputError(
                f"checkpoint was planned for {int(saved_total)} critic steps but this trainer for {self.total_steps}: "
                "the lr schedule would change on resume; pass the original total_steps"
            )
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.c_opt.load_state_dict(state["c_opt"])
        self.rng.set_state(state["rng"])
        self.critic_steps = int(state["critic_steps"])
        self.generator_steps = int(state["generator_steps"])
        if self.generator_ema is not None:
            self.generator_ema.load_state_dict(state["generator_ema"])
            self.ema_updates = int(state["ema_updates"])
