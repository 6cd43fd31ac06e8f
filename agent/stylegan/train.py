"""StyleGAN2 training at the site: one step, a loop with checkpoints, resume and progress.

``StyleGANTrainer.step`` trains the discriminator once, then the generator once, then updates the
generator EMA and (in ``local`` mode) the adaptive augmentation probability. In ``federated-dp``
mode the discriminator step is DP-SGD over Poisson-sampled patients (:mod:`agent.stylegan.dp_step`);
the generator only ever sees the discriminator, so its updates are post-processing.

All randomness (weights init, z, noise, augmentation, batch choice, DP noise) comes from one
``torch.Generator`` seeded at construction and saved in every checkpoint, so a resumed run is
bit-identical to an uninterrupted one on the same device.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from agent.stylegan.augment import AdaptiveAugment, augment
from agent.stylegan.checkpoint import RELEASE_POLICY_KEY, load_checkpoint, save_checkpoint
from agent.stylegan.config import ReleasePolicy, StyleGANConfig, TrainingConfig, TrainingMode, release_policy_for
from agent.stylegan.discriminator import Discriminator
from agent.dp.sampling import UnitBatch, UnitSampler
from agent.stylegan.dp_step import (DPSettings, make_private_optimizer, make_sampler, private_step, secret_generator,
                                    unit_discriminator_grads)
from agent.stylegan.ema import ema_beta, update_ema
from agent.stylegan.generator import Generator
from agent.stylegan.losses import d_logistic_loss, g_nonsaturating_loss, r1_penalty
from protocols.errors import BadInputError, ConfigError, EgressBlockedError
from protocols.tasks import PrivacyUnit

log = logging.getLogger(__name__)

Progress = Callable[[int, dict[str, float]], None]
GENERATOR, GENERATOR_EMA, DISCRIMINATOR = "generator.", "generator_ema.", "discriminator."


class StyleGANTrainer:
    """Generator, discriminator, EMA generator, optimisers, augmentation and RNG of one run."""

    def __init__(self, arch: StyleGANConfig, train: TrainingConfig, *, mode: TrainingMode, seed: int,
                 dp: DPSettings | None = None, device: str | torch.device = "cpu") -> None:
        if (mode is TrainingMode.FEDERATED_DP) != (dp is not None):
            raise ConfigError(f"stylegan mode {mode.value}: DP settings are required for federated-dp and "
                              f"not allowed for local")
        if mode is TrainingMode.FEDERATED_DP and arch.mbstd_group_size:
            raise ConfigError("stylegan.mbstd_group_size must be 0 for federated-dp: minibatch stddev mixes "
                              "patients, so per-patient gradients would not be per patient")
        self.arch, self.train, self.mode, self.dp = arch, train, mode, dp
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # layer constructors draw from the global RNG; keep it private
            self.G = Generator(arch).to(self.device)
            self.D = Discriminator(arch).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self._cuda = self.device.type == "cuda"
        if self._cuda and train.channels_last:
            self.D.to(memory_format=torch.channels_last)
        self.g_opt = torch.optim.Adam(self.G.parameters(), lr=train.g_lr, betas=train.betas)
        self.d_opt = torch.optim.Adam(self.D.parameters(), lr=train.d_lr, betas=train.betas)
        self.ada = AdaptiveAugment(p=train.augment_p, target=train.augment_target,
                                   speed_images=train.augment_speed_images, adaptive=mode is TrainingMode.LOCAL)
        self.rng = torch.Generator(device="cpu").manual_seed(seed + 1)  # CPU: same stream on any device
        # Under DP, draws whose COUNT is the private Poisson batch size (the discriminator step's fakes,
        # their noise inputs and the augmentations) come from OS randomness: from the seeded stream they
        # would shift every later generator-step latent by an amount that depends on who was sampled.
        self.batch_rng = self.rng if mode is TrainingMode.LOCAL else secret_generator()
        self.step_count = 0
        self._dp_opt: torch.optim.Optimizer | None = None  # d_opt wrapped by the mechanism (federated-dp)
        self._dp_population = 0

    # -- one training step --------------------------------------------------------------------
    def step(self, real: torch.Tensor, batch: UnitBatch | None = None, *, population: int | None = None) -> dict[str, float]:
        """Train D once and G once on ``real`` (B, C, R, R) in [-1, 1]; return metrics.

        Under ``federated-dp``, ``batch`` says which unit each image belongs to (from a Poisson
        draw) and ``population`` is the number of units the sample rate refers to.
        """
        expected = (self.arch.image_channels, self.arch.resolution, self.arch.resolution)
        if real.ndim != 4 or tuple(real.shape[1:]) != expected:
            raise BadInputError(f"stylegan step: expected real images (B, {', '.join(map(str, expected))}), "
                                f"got {tuple(real.shape)}")
        real = real.to(self.device)
        if self.mode is TrainingMode.LOCAL:
            metrics = self._d_step_local(real)
        else:
            if batch is None or population is None:
                raise BadInputError("a federated-dp step needs the Poisson unit batch and the population size")
            metrics = self._d_step_dp(real, batch, population)
        # The generator step and the EMA are not noised, so under DP their batch is the configured
        # constant: the Poisson draw's size depends on who was sampled and must not reach released weights.
        g_batch = max(real.shape[0], 1) if self.mode is TrainingMode.LOCAL else self.train.batch_size
        metrics.update(self._g_step(batch=g_batch))
        update_ema(self.G_ema, self.G, beta=ema_beta(batch_size=g_batch, half_life_images=self.train.ema_half_life_images))
        self.step_count += 1
        if self.step_count % self.train.augment_interval == 0:
            r_t = self.ada.update()
            if r_t is not None:
                metrics["ada_rt"] = r_t
        metrics["augment_p"] = self.ada.p
        return metrics

    def _fakes(self, batch: int, *, grad: bool, rng: torch.Generator | None = None) -> torch.Tensor:
        rng = rng or self.rng
        z = self.G.sample_z(batch, generator=rng).to(self.device)
        with torch.set_grad_enabled(grad), self._autocast():
            return self.G(z, noise_mode="random", generator=rng, update_w_avg=grad).float()

    def _augment(self, x: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        return augment(x, self.ada.p, generator=rng or self.rng)

    def _d_step_local(self, real: torch.Tensor) -> dict[str, float]:
        fake = self._fakes(real.shape[0], grad=False)
        self.D.requires_grad_(True)
        with self._autocast():
            real_logits = self.D(self._cl(self._augment(real))).float()
            fake_logits = self.D(self._cl(self._augment(fake))).float()
        loss = d_logistic_loss(real_logits, fake_logits).mean()
        self.ada.observe(real_logits)
        metrics = {"d_loss": float(loss.detach())}
        if self.step_count % self.train.r1_interval == 0 and self.train.r1_gamma > 0:
            # Lazy R1 (StyleGAN2): every r1_interval steps, scaled up by the interval. Kept in float32.
            penalty, _ = r1_penalty(self.D, self._cl(self._augment(real)))
            loss = loss + 0.5 * self.train.r1_gamma * self.train.r1_interval * penalty.mean()
            metrics["r1"] = float(penalty.detach().mean())
        self.d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.d_opt.step()
        return metrics

    def _d_step_dp(self, real: torch.Tensor, batch: UnitBatch, population: int) -> dict[str, float]:
        assert self.dp is not None
        if self._dp_opt is None or population != self._dp_population:
            self._dp_opt = make_private_optimizer(self.d_opt, self.dp, population=population)
            self._dp_population = population
        if real.shape[0]:
            fake = self._fakes(real.shape[0], grad=False, rng=self.batch_rng)
            real, fake = self._augment(real, self.batch_rng), self._augment(fake, self.batch_rng)
        else:
            fake = real
        grads, loss = unit_discriminator_grads(self.D, real, fake, batch, r1_gamma=self.train.r1_gamma)
        private_step(self._dp_opt, self.D, grads)  # clip per unit, sum, add noise, average, Adam step
        return {"d_loss": loss, "dp_units": float(batch.num_units)}

    def _g_step(self, *, batch: int) -> dict[str, float]:
        self.D.requires_grad_(False)  # G's step must not leave gradients on D
        fake = self._fakes(batch, grad=True)
        with self._autocast():
            loss = g_nonsaturating_loss(self.D(self._cl(self._augment(fake))).float()).mean()
        self.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.g_opt.step()
        self.D.requires_grad_(True)
        return {"g_loss": float(loss.detach())}

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._cuda and self.train.mixed_precision:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _cl(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self._cuda and self.train.channels_last else x

    # -- batches ------------------------------------------------------------------------------
    def batches(self, images: torch.Tensor, patient_index: torch.Tensor) -> Iterator[tuple[torch.Tensor, UnitBatch]]:
        """Endless batches: uniform images (local) or Poisson-sampled patients (federated-dp)."""
        sampler: UnitSampler | None = make_sampler(patient_index, self.dp) if self.dp is not None else None
        while True:
            if sampler is None:
                idx = torch.randint(images.shape[0], (self.train.batch_size,), generator=self.rng)
                yield images[idx], UnitBatch(idx, patient_index[idx], int(patient_index.max()) + 1)
            else:
                batch = sampler.draw()
                yield images[batch.sample_index], batch

    def fit(self, images: torch.Tensor, patient_index: torch.Tensor, *, steps: int,
            checkpoint_path: Path | None = None, checkpoint_every: int = 0,
            progress: Progress | None = None) -> dict[str, float]:
        """Train until ``step_count == steps`` (so a resumed trainer continues where it stopped)."""
        if patient_index.shape != (images.shape[0],):
            raise BadInputError(f"patient_index: expected one entry per image ({images.shape[0]}), "
                                f"got shape {tuple(patient_index.shape)}")
        population = (int(patient_index.max()) + 1 if self.dp is None or self.dp.unit is PrivacyUnit.PATIENT
                      else images.shape[0])
        metrics: dict[str, float] = {}
        source = self.batches(images, patient_index)
        while self.step_count < steps:
            t0 = time.perf_counter()
            real, batch = next(source)
            metrics = self.step(real, batch, population=population)
            metrics["seconds"] = time.perf_counter() - t0
            if progress is not None:
                progress(self.step_count, metrics)
            log.debug("step %d: %s", self.step_count, metrics)
            if checkpoint_path is not None and checkpoint_every and self.step_count % checkpoint_every == 0:
                self.save(checkpoint_path)
        if checkpoint_path is not None:
            self.save(checkpoint_path)
        return metrics

    # -- weights for federated averaging ------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Float32 arrays of G, G_ema and D (prefixed), for a federated-dp release only.

        Raises
        ------
        EgressBlockedError
            In ``local`` mode: those weights carry no privacy guarantee and stay at the site.
        """
        if release_policy_for(self.mode) is not ReleasePolicy.DP_RELEASABLE:
            raise EgressBlockedError(f"StyleGAN weights trained in mode {self.mode.value!r} are site-only; "
                                     f"only federated-dp weights may be exported")
        out = {}
        for prefix, module in ((GENERATOR, self.G), (GENERATOR_EMA, self.G_ema), (DISCRIMINATOR, self.D)):
            out.update({prefix + k: v.detach().cpu().to(torch.float32).numpy().copy()
                        for k, v in module.state_dict().items()})
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Load aggregated weights (same names and shapes as :meth:`to_arrays`).

        Raises
        ------
        BadInputError
            If a name is missing or unexpected, or a shape differs.
        """
        for prefix, module in ((GENERATOR, self.G), (GENERATOR_EMA, self.G_ema), (DISCRIMINATOR, self.D)):
            own = module.state_dict()
            given = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            if set(given) != set(own):
                diff = sorted(set(own) ^ set(given))
                raise BadInputError(f"aggregated StyleGAN weights do not match this architecture: "
                                    f"{len(diff)} name(s) differ, e.g. {prefix}{diff[0]}")
            for k, v in given.items():
                if tuple(v.shape) != tuple(own[k].shape):
                    raise BadInputError(f"weight {prefix}{k}: shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
            module.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(own[k]) for k, v in given.items()})
        unknown = [k for k in arrays if not k.startswith((GENERATOR, GENERATOR_EMA, DISCRIMINATOR))]
        if unknown:
            raise BadInputError(f"{len(unknown)} unexpected weight name(s), e.g. {unknown[0]}")

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        """Everything needed to resume, as tensors and plain values."""
        return {
            "metadata": {"training_mode": self.mode.value, RELEASE_POLICY_KEY: release_policy_for(self.mode).value,
                         "step": self.step_count, "dp": _plain(dataclasses.asdict(self.dp)) if self.dp else None},
            "arch": self.arch.to_dict(),
            "train": dataclasses.asdict(self.train),
            "state": {"generator": self.G.state_dict(), "generator_ema": self.G_ema.state_dict(),
                      "discriminator": self.D.state_dict(), "g_optimizer": self.g_opt.state_dict(),
                      "d_optimizer": self.d_opt.state_dict(), "augment": self.ada.state_dict(),
                      "rng": self.rng.get_state()},
        }

    def save(self, path: Path) -> None:
        save_checkpoint(Path(path), self.state())
        log.info("checkpoint at step %d written", self.step_count)

    def load(self, path: Path) -> None:
        """Resume from a checkpoint of the same architecture, settings and mode.

        Raises
        ------
        BadInputError
            If the checkpoint was written by a different architecture, training config or mode.
        """
        payload = load_checkpoint(Path(path))
        mine = self.state()
        for key in ("arch", "train"):
            if _normalise(payload[key]) != _normalise(mine[key]):
                raise BadInputError(f"checkpoint {key} differs from this trainer's; resume with the same settings")
        if payload["metadata"]["training_mode"] != self.mode.value:
            raise BadInputError(f"checkpoint was trained in mode {payload['metadata']['training_mode']!r}, "
                                f"this trainer is {self.mode.value!r}; modes cannot be mixed")
        s = payload["state"]
        self.G.load_state_dict(s["generator"])
        self.G_ema.load_state_dict(s["generator_ema"])
        self.D.load_state_dict(s["discriminator"])
        self.g_opt.load_state_dict(s["g_optimizer"])
        self.d_opt.load_state_dict(s["d_optimizer"])
        self.ada.load_state_dict(s["augment"])
        self.rng.set_state(s["rng"])
        self.step_count = int(payload["metadata"]["step"])


def _plain(d: dict[str, object]) -> dict[str, object]:
    # Enums are not plain data for weights_only loading: store their values.
    return {k: v.value if isinstance(v, PrivacyUnit) else v for k, v in d.items()}


def _normalise(d: object) -> object:
    # Tuples come back from torch.load as tuples or lists depending on version; compare as lists.
    if isinstance(d, dict):
        return {k: _normalise(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_normalise(v) for v in d]
    return d
