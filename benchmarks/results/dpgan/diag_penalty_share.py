"""Diagnostic (not a result): how much of a per-patient critic gradient is the gradient penalty?

WGAN-GP critic (width 16, 42,609 parameters) and generator of the 10,000-patient runs (label bias
-1), trained WITHOUT DP (B=256 patches, n_critic 2, lr 2e-4) on a small phantom population
(200 train patients, 8 patches each). At each checkpoint, for 256 real patches (one per patient,
as in the 256 x 1 DP runs), paired fakes and interpolation weights, the per-sample gradient of
the critic loss is split with the project's per-sample engine (fast_per_sample_grads) into

* adv = gradient of -D(x) + D(x~)      (objective with gp_weight 0)
* gp  = gradient of 10 (||grad D(x^)|| - 1)^2   (full minus adv)

and reported as medians over the 256 samples of ||adv||, ||gp||, ||adv + gp||, the share
||gp|| / (||adv|| + ||gp||), and cos(adv, gp); also the norm of the batch MEAN of the penalty
gradients (what a public, unclipped penalty adds to an update) against the batch mean of the
adversarial gradients each clipped at C = 1 (what DP-SGD adds before noise). Done twice: the
penalty on interpolates (as in the runs) and on the fakes (gp_at="fakes", the public-penalty
variant), each critic trained with its own penalty point.
Run from /work/main: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/dpgan/diag_penalty_share.py
"""
import dataclasses
import sys
import time

sys.path.insert(0, "benchmarks")
import numpy as np
import torch

from dpgan_utility import phantom_volumes
from agent.dp.critic_loss import CriticObjective
from agent.dp.per_sample_grads import fast_per_sample_grads
from agent.models import GanSpec
from agent.patching.patches import extract_patches
from agent.training.gan_trainer import GanTrainer, Hyperparameters

CHECKPOINTS = (0, 100, 300, 600)
B, C = 256, 1.0
vols = phantom_volumes(patients=200, volume_size=48, seed=0)
train = extract_patches(vols, size=32, per_volume=8, vessel_fraction=0.5, rng=np.random.default_rng(0))
# One patch per patient (the first of each), as a 256 x 1 DP step draws (200 patients: 56 reused).
first = np.unique(train.patient_index, return_index=True)[1]
rows = np.resize(first, B)
print(f"{len(vols)} patients, {train.images.shape[0]} patches; probe batch {B} patches", flush=True)


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in grads.values()], 1)


for gp_at in ("interpolates", "fakes"):
    hp = Hyperparameters(n_critic=2, critic_lr=2e-4, generator_lr=2e-4, beta1=0.5, beta2=0.9, batch_size=B,
                         generator_label_bias=-1.0, gp_at=gp_at)
    tr = GanTrainer(GanSpec("wgan-gp", 32, width=16), train.images, train.patient_index, hp=hp, dp=None, seed=0)
    n_params = sum(p.numel() for p in tr.critic.parameters())
    c0 = time.process_time()
    done = 0
    for ckpt in CHECKPOINTS:
        while done < ckpt:
            tr.train_iteration()
            done += 1
        g = torch.Generator().manual_seed(123)
        real = tr.data[torch.as_tensor(rows)]
        fake = tr._fakes(B, g)
        alpha = torch.rand(B, generator=g)
        full, _ = fast_per_sample_grads(tr.critic, real, fake, alpha, tr.objective)
        adv_obj = dataclasses.replace(tr.objective, gp_weight=0.0)
        adv, _ = fast_per_sample_grads(tr.critic, real, fake, alpha, adv_obj)
        f, a = flat(full), flat(adv)
        p = f - a
        na, npn, nf = a.norm(dim=1), p.norm(dim=1), f.norm(dim=1)
        share = npn / (na + npn)
        cos = torch.nn.functional.cosine_similarity(a, p, dim=1)
        clipped_adv_mean = (a * torch.clamp(C / na, max=1.0).unsqueeze(1)).mean(0).norm()
        clipped_full_mean = (f * torch.clamp(C / nf, max=1.0).unsqueeze(1)).mean(0).norm()
        gp_mean = p.mean(0).norm()
        adv_mean = a.mean(0).norm()
        med = lambda t: float(t.median())  # noqa: E731
        print(f"penalty on {gp_at}, critic step {ckpt} ({n_params} params): median per-sample norms "
              f"adv {med(na):.3g}, gp {med(npn):.3g}, adv+gp {med(nf):.3g}; gp share {med(share):.3f} "
              f"(quartiles {float(share.quantile(0.25)):.3f}-{float(share.quantile(0.75)):.3f}); cos(adv, gp) "
              f"{med(cos):+.3f}; per-sample norms > C=1: {float((nf > C).float().mean()):.3f}; batch means: "
              f"||mean adv|| {float(adv_mean):.3g}, ||mean gp|| {float(gp_mean):.3g}, "
              f"||mean clipped adv|| {float(clipped_adv_mean):.3g}, ||mean clipped adv+gp|| "
              f"{float(clipped_full_mean):.3g} [{time.process_time() - c0:.0f} CPU s]", flush=True)
