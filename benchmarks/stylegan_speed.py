"""Per-step CPU time of StyleGAN2 at 64 px: generator step, discriminator step (with and without
R1), DP discriminator step (exact per-sample gradients incl. R1, per-patient clipping, noise), and
inversion throughput (encoder-only and encoder + latent optimisation, seconds per 1,000 images).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stylegan_speed.py [--preset small64] [--batch 8] [--reps 5]``
Weights are random: this measures time, not quality.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from agent.dp.sampling import UnitBatch
from agent.inversion.encoder import EncoderConfig, ReStyleEncoder
from agent.inversion.invert import OptimisationSettings, optimise_latents, refine
from agent.inversion.losses import ReconstructionLoss, ReconstructionWeights
from agent.features.loader import load_feature_extractor
from agent.stylegan.config import TrainingConfig, TrainingMode, preset
from agent.stylegan.dp_step import DPSettings
from agent.stylegan.train import StyleGANTrainer


def _median(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small64")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(int(torch.get_num_threads()))
    arch = dataclasses.replace(preset(args.preset), mbstd_group_size=0)
    b, r = args.batch, arch.resolution
    train = TrainingConfig(batch_size=b, augment_p=0.2, r1_interval=1)
    real = torch.rand(b, 3, r, r, generator=torch.Generator().manual_seed(0)) * 2 - 1
    local = StyleGANTrainer(arch, train, mode=TrainingMode.LOCAL, seed=0)
    dp = StyleGANTrainer(arch, train, mode=TrainingMode.FEDERATED_DP, seed=0,
                         dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1))
    n_g = sum(p.numel() for p in local.G.parameters()) / 1e6
    n_d = sum(p.numel() for p in local.D.parameters()) / 1e6
    print(f"StyleGAN2 {args.preset} {r}x{r}: G {n_g:.2f} M, D {n_d:.2f} M params; batch {b}; "
          f"{torch.get_num_threads()} thread(s); median of {args.reps}")

    with torch.no_grad():
        t = _median(lambda: local._fakes(b, grad=False), args.reps)
    print(f"generator forward (no grad):             {t * 1e3:8.0f} ms")
    print(f"generator step (fwd+bwd through D, Adam): {_median(lambda: local._g_step(batch=b), args.reps) * 1e3:8.0f} ms")
    local.train = dataclasses.replace(train, r1_interval=10**9)
    local.step_count = 1
    print(f"D step, no R1:                            {_median(lambda: local._d_step_local(real), args.reps) * 1e3:8.0f} ms")
    local.train = dataclasses.replace(train, r1_interval=1)
    print(f"D step with R1 (double backward):         {_median(lambda: local._d_step_local(real), args.reps) * 1e3:8.0f} ms")
    patients = torch.arange(b) // 2
    batch = UnitBatch(torch.arange(b), patients, int(patients.max()) + 1)
    t_dp = _median(lambda: dp._d_step_dp(real, batch, 100), args.reps)
    print(f"DP D step with R1 ({b} images, {batch.num_units} patients): {t_dp * 1e3:8.0f} ms")

    enc = ReStyleEncoder(EncoderConfig(resolution=r, num_ws=arch.num_ws, w_dim=arch.w_dim))
    G = local.G_ema
    with torch.no_grad():
        t_enc = _median(lambda: refine(enc, G, real, iterations=5), args.reps)
    print(f"inversion, encoder only (5 iterations):   {t_enc / b * 1000:8.1f} s per 1,000 images")
    loss = ReconstructionLoss(load_feature_extractor(), ReconstructionWeights(feature_resolution=128))
    settings = OptimisationSettings(steps=100)
    t_opt = _median(lambda: optimise_latents(G, real, G.mean_ws(b), loss, settings), 1)
    print(f"inversion, + 100 optimisation steps:      {(t_opt + t_enc) / b * 1000:8.1f} s per 1,000 images")


if __name__ == "__main__":
    main()
