"""Train the ReStyle encoder at the site, on its own images and on samples of its generator.

Generator samples come with their true W+ code, so they add a latent loss that teaches the
encoder the generator's latent geometry; real images teach it the site's image distribution. The
encoder saw real images without DP, so its checkpoint is always ``site-only``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from agent.inversion.encoder import EncoderConfig, ReStyleEncoder
from agent.inversion.invert import synthesize
from agent.inversion.losses import ReconstructionLoss
from agent.stylegan.checkpoint import RELEASE_POLICY_KEY, load_checkpoint, save_checkpoint
from agent.stylegan.config import ReleasePolicy
from agent.stylegan.generator import Generator
from protocols.errors import BadInputError

log = logging.getLogger(__name__)

ENCODER_FORMAT = "anonfed-restyle-encoder/1"


@dataclasses.dataclass(frozen=True)
class EncoderTraining:
    """Optimisation settings of the encoder."""

    batch_size: int = 8  # images per step (half real, half generator samples when both exist)
    lr: float = 1e-3  # Adam learning rate (ReStyle: 1e-4 with Ranger at 1024 px; higher for small nets)
    iterations: int = 3  # refinement iterations per step (ReStyle trains with N = 5)
    sample_fraction: float = 0.5  # share of each batch drawn from the generator instead of real images


class EncoderTrainer:
    """An encoder, its optimiser and its RNG, for a frozen generator."""

    def __init__(self, G: Generator, loss_fn: ReconstructionLoss, settings: EncoderTraining, *, seed: int,
                 width: int = 64) -> None:
        self.G = G.eval().requires_grad_(False)
        self.cfg = EncoderConfig(resolution=G.cfg.resolution, num_ws=G.num_ws, w_dim=G.cfg.w_dim, width=width)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # nn.Conv2d initialises from the global RNG; keep it private
            self.encoder = ReStyleEncoder(self.cfg)
        self.loss_fn = loss_fn
        self.settings = settings
        self.opt = torch.optim.Adam(self.encoder.parameters(), lr=settings.lr)
        self.rng = torch.Generator().manual_seed(seed + 1)
        self.step_count = 0

    def _batch(self, real: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Targets and, for generator samples, their true W+ (None for real rows, filled with NaN)."""
        b = self.settings.batch_size
        n_fake = b if real is None else round(b * self.settings.sample_fraction)
        parts, true = [], []
        if n_fake:
            with torch.no_grad():
                w = self.G.mapping(self.G.sample_z(n_fake, generator=self.rng))
                ws = self.G.broadcast(w)
                parts.append(synthesize(self.G, ws))
                true.append(ws)
        if real is not None and b - n_fake:
            idx = torch.randint(real.shape[0], (b - n_fake,), generator=self.rng)
            parts.append(real[idx])
            true.append(torch.full((b - n_fake, self.G.num_ws, self.G.cfg.w_dim), float("nan")))
        return torch.cat(parts), torch.cat(true)

    def step(self, real: torch.Tensor | None) -> dict[str, float]:
        """One optimiser step over ``iterations`` refinements (gradients accumulated per iteration)."""
        targets, true_ws = self._batch(real)
        is_sample = ~torch.isnan(true_ws[:, 0, 0])
        ws = self.G.mean_ws(targets.shape[0])
        current = synthesize(self.G, ws)
        self.opt.zero_grad(set_to_none=True)
        metrics = {}
        for it in range(self.settings.iterations):
            ws = ws.detach() + self.encoder(targets, current)
            recon = synthesize(self.G, ws)
            # Real rows have no true code: compare them with themselves, so their latent term is 0.
            reference = torch.where(is_sample.view(-1, 1, 1), true_ws, ws.detach())
            per_sample = self.loss_fn(recon, targets, ws=ws, true_ws=reference)
            loss = per_sample.mean()
            loss.backward()
            metrics[f"loss_iter{it + 1}"] = float(loss.detach())
            current = recon.detach()
        self.opt.step()
        self.step_count += 1
        return metrics

    def fit(self, real: torch.Tensor | None, *, steps: int, checkpoint_path: Path | None = None,
            progress: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        """Train until ``step_count == steps``; ``real`` (N, 3, R, R) in [-1, 1] or None (samples only)."""
        if real is not None and tuple(real.shape[1:]) != (3, self.cfg.resolution, self.cfg.resolution):
            raise BadInputError(f"encoder training: expected real images (N, 3, {self.cfg.resolution}, "
                                f"{self.cfg.resolution}), got {tuple(real.shape)}")
        metrics: dict[str, float] = {}
        while self.step_count < steps:
            t0 = time.perf_counter()
            metrics = self.step(real)
            metrics["seconds"] = time.perf_counter() - t0
            if progress is not None:
                progress(self.step_count, metrics)
        if checkpoint_path is not None:
            self.save(checkpoint_path)
        return metrics

    def save(self, path: Path) -> None:
        save_checkpoint(Path(path), {
            "metadata": {RELEASE_POLICY_KEY: ReleasePolicy.SITE_ONLY.value, "step": self.step_count},
            "encoder_config": dataclasses.asdict(self.cfg),
            "state": {"encoder": self.encoder.state_dict(), "optimizer": self.opt.state_dict(),
                      "rng": self.rng.get_state()},
        }, fmt=ENCODER_FORMAT)

    def load(self, path: Path) -> None:
        """Resume from :meth:`save` output.

        Raises
        ------
        BadInputError
            If the file is not an encoder checkpoint for this generator's shape.
        """
        payload = load_checkpoint(Path(path), fmt=ENCODER_FORMAT)
        if payload["encoder_config"] != dataclasses.asdict(self.cfg):
            raise BadInputError("encoder checkpoint was made for another generator shape or width; "
                                "train a new encoder for this generator")
        self.encoder.load_state_dict(payload["state"]["encoder"])
        self.opt.load_state_dict(payload["state"]["optimizer"])
        self.rng.set_state(payload["state"]["rng"])
        self.step_count = int(payload["metadata"]["step"])
