"""One synthetic image per k-anonymous group, by any of the four methods, from in-memory images.

Steps: resize the site's photographs to the generator's resolution; invert them into W+ with the
ReStyle encoder (5 refinement iterations, as published), optionally refined per image by latent
optimisation on the reconstruction loss (``Inverter.optimisation``); cluster the W+ codes by patient
(:mod:`agent.ksalsa.clustering`); then per group the k-SALSA average (centroid + local style
alignment) or a baseline. Without a generator the pixel baselines cluster on downsampled pixels.
No site I/O and no release here (see :mod:`agent.ksalsa.task` and :mod:`agent.ksalsa.release`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agent.ksalsa.baselines import (Method, centroid_latents, group_weights, k_same_eigen, k_same_pixel, patient_weights,
                                    to_tensor, to_uint8)
from agent.ksalsa.clustering import Clustering, cluster_by_patient
from agent.inversion.invert import OptimisationSettings
from agent.ksalsa.style_alignment import AlignmentFeatures, AlignmentSettings, StepTimes, align_group, site_style_grams
from agent.records import FundusImage
from protocols.errors import BadInputError

log = logging.getLogger(__name__)

PIXEL_CLUSTER_EDGE = 16  # pixel baselines without a generator cluster on 16x16 thumbnails


@dataclasses.dataclass(frozen=True)
class Inverter:
    """A frozen generator and its encoder (both on the same device).

    With ``optimisation`` and ``loss`` set, each image's encoder code is refined by that many Adam
    steps on the reconstruction loss (the generator stays frozen); inversions then fit the members
    much better than the encoder alone, at a one-off cost per image.
    """

    generator: nn.Module
    encoder: nn.Module
    iterations: int = 5  # ReStyle refinement iterations (paper: 5)
    optimisation: OptimisationSettings | None = None  # per-image latent optimisation after the encoder
    loss: nn.Module | None = None  # ReconstructionLoss for the optimisation

    def __post_init__(self) -> None:
        if self.optimisation is not None and self.optimisation.steps and self.loss is None:
            raise BadInputError("latent optimisation needs a reconstruction loss (agent.inversion.losses)")

    @property
    def resolution(self) -> int:
        return int(self.generator.cfg.resolution)

    def invert(self, images: torch.Tensor, *, batch: int = 32) -> torch.Tensor:
        """W+ codes (N, num_ws, w_dim) of images (N, 3, R, R) in [-1, 1]."""
        from agent.inversion.invert import optimise_latents, refine

        out = []
        for i in range(0, images.shape[0], batch):
            targets = images[i:i + batch]
            with torch.no_grad():
                ws = refine(self.encoder, self.generator, targets, iterations=self.iterations)[-1]
            if self.optimisation is not None and self.optimisation.steps and self.loss is not None:
                grad_state = [p.requires_grad for p in self.generator.parameters()]
                self.generator.requires_grad_(False)
                try:  # gradients are needed here even if the caller runs under no_grad
                    with torch.enable_grad():
                        ws, losses = optimise_latents(self.generator, targets, ws, self.loss, self.optimisation)
                finally:
                    for p, flag in zip(self.generator.parameters(), grad_state):
                        p.requires_grad_(flag)
                log.info("latent optimisation of %d image(s): loss %.4f -> %.4f", targets.shape[0], losses[0], losses[-1])
            out.append(ws)
        return torch.cat(out)


@dataclasses.dataclass(frozen=True)
class Averages:
    """The groups and one uint8 image (H, W, 3) per group, plus timing of the alignment."""

    clustering: Clustering
    images: np.ndarray  # (groups, H, W, 3) uint8
    method: Method
    seconds: float  # wall time of the averaging (after inversion and clustering)
    times: StepTimes  # alignment step costs summed over groups (zero for the baselines)


def prepare_images(images: Sequence[FundusImage], resolution: int) -> torch.Tensor:
    """(N, 3, R, R) float in [-1, 1], resized with antialiasing when the sizes differ."""
    if not images:
        raise BadInputError("no fundus images to average; ingest the site's photographs first")
    shapes = {im.rgb.shape for im in images}
    if len(shapes) == 1:
        x = to_tensor([im.rgb for im in images])
        return _resize(x, resolution)
    return torch.cat([_resize(to_tensor([im.rgb]), resolution) for im in images])


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)


def make_averages(
    images: Sequence[FundusImage],
    *,
    method: Method,
    k: int,
    inverter: Inverter | None = None,
    features: nn.Module | None = None,
    settings: AlignmentSettings = AlignmentSettings(),
    resolution: int | None = None,
    eigen_components: int | None = None,
    ws: torch.Tensor | None = None,
    grouping: str = "nearest",
    grouping_seed: int = 0,
) -> Averages:
    """Cluster ``images`` into groups of >= k distinct patients and make one image per group.

    ``ws`` are W+ codes of ``images`` already computed with ``inverter`` (one row per image), so
    several methods and k can share one (possibly optimised) inversion; by default the images are
    inverted here. ``grouping``/``grouping_seed`` choose how groups are formed
    (:func:`agent.ksalsa.clustering.cluster_by_patient`; "nearest" is the published clustering).

    Raises
    ------
    KAnonymityError
        If the images come from fewer than ``k`` distinct patients.
    BadInputError
        If a latent method is asked for without an inverter, or k-SALSA without features.
    """
    if method in (Method.KSALSA, Method.CENTROID) and inverter is None:
        raise BadInputError(f"method {method.value} needs a generator and an encoder (the site's StyleGAN)")
    if method is Method.KSALSA and features is None:
        raise BadInputError("method ksalsa needs a feature network (see agent.features)")
    keys = [im.patient_key for im in images]
    size = inverter.resolution if inverter is not None else (resolution or images[0].rgb.shape[0])
    pixels = prepare_images(images, size)
    if ws is not None and (inverter is None or ws.shape[0] != len(images)):
        raise BadInputError(f"precomputed W+ codes need an inverter and one row per image ({len(images)}), "
                            f"got {tuple(ws.shape)}")
    if inverter is not None:
        device = next(inverter.generator.parameters()).device
        ws = inverter.invert(pixels.to(device)) if ws is None else ws.to(device)
        codes = ws.flatten(1).cpu().numpy()
    else:
        codes = _resize(pixels, min(PIXEL_CLUSTER_EDGE, size)).flatten(1).numpy()
    clustering = cluster_by_patient(codes, keys, k=k, grouping=grouping, seed=grouping_seed)
    t0 = time.perf_counter()
    times = StepTimes()
    if method is Method.K_SAME_PIXEL:
        out = k_same_pixel(pixels, clustering, keys)
    elif method is Method.K_SAME_EIGEN:
        out = k_same_eigen(pixels, clustering, keys, components=eigen_components)
    elif method is Method.CENTROID:
        with torch.no_grad():
            out = inverter.generator.synthesis(centroid_latents(ws, clustering, keys), noise_mode="const")  # type: ignore[union-attr]
    else:
        aligner = AlignmentFeatures(features, settings)  # type: ignore[arg-type]
        anchor = site_grams = None
        pw = torch.as_tensor(patient_weights(keys), dtype=ws.dtype, device=ws.device)  # type: ignore[union-attr]
        if settings.shrink != 1.0:
            # Site-wide mean over all N >= k patients (patient-weighted like the group means), so a
            # shrunk start still derives from >= k patients and carries less of its own group.
            anchor = (ws * pw.view(-1, 1, 1)).sum(dim=0, keepdim=True)  # type: ignore[operator]
            log.info("k-SALSA starts shrunk toward the site mean of %d patients (psi=%g, W+ layers: %s)",
                     len(set(keys)), settings.shrink, "all" if settings.shrink_layers is None else f"first {settings.shrink_layers}")
        if settings.style_target == "site":
            # The same population and weights as the anchor; once per release, the same for every group.
            site_grams = site_style_grams(inverter.generator, ws, pw.tolist(), aligner)  # type: ignore[union-attr,arg-type]
            log.info("k-SALSA style target: mean patch Grams of the %d patients of the release", len(set(keys)))
        outs = []
        for idx, w in group_weights(clustering, keys):
            result = align_group(inverter.generator, ws[idx], w.tolist(), aligner, anchor=anchor,  # type: ignore[union-attr,index]
                                 site_grams=site_grams)
            outs.append(result.image)
            for name in ("generator", "features", "optimiser", "steps"):
                setattr(times, name, getattr(times, name) + getattr(result.times, name))
        out = torch.cat(outs)
    seconds = time.perf_counter() - t0
    log.info("made %d %s averages (k=%d) in %.1f s", len(clustering.groups), method.value, k, seconds)
    return Averages(clustering, to_uint8(out), method, seconds, times)
