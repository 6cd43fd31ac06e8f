"""Diagnostic (not a result): does clipping or noise collapse the label channel? image unit, width 16."""
import sys, time
sys.path.insert(0, "benchmarks")
import numpy as np, torch
from dpgan_utility import phantom_volumes
from agent.patching.patches import extract_patches
from agent.models import GanSpec
from agent.models.weights import sample_from_generator
from agent.training.gan_trainer import DPSettings, GanTrainer, Hyperparameters
from agent.dp.per_sample_grads import fast_per_sample_grads
from protocols.tasks import PrivacyUnit
vols = phantom_volumes(patients=440, volume_size=48, seed=0)
order = np.random.default_rng(0).permutation(len(vols))
train_vols = [vols[i] for i in order[40:]]
train = extract_patches(train_vols, size=32, per_volume=48, rng=np.random.default_rng(0))
B = 64
for name, sigma, C in [("nondp", None, None), ("clip1e6_sigma0", 0.0, 1e6), ("clip1_sigma0", 0.0, 1.0), ("clip1_sigma0.64", 0.64, 1.0), ("clip10_sigma0", 0.0, 10.0)]:
    spec = GanSpec("wgan-gp", 32, width=16)
    hp = Hyperparameters(n_critic=2, critic_lr=2e-4, generator_lr=2e-4, beta1=0.5, beta2=0.9, patches_per_patient=8, batch_size=B)
    dp = None if sigma is None else DPSettings(sigma, C, B / len(train), PrivacyUnit.IMAGE, float(B))
    tr = GanTrainer(spec, train.images, train.patient_index, hp=hp, dp=dp, seed=0)
    t = time.process_time(); gl = []
    for step in range(1, 801):
        out = tr.train_iteration()
        if "generator_loss" in out: gl.append(out["generator_loss"])
        if step % 400 == 0:
            pairs = sample_from_generator(tr.generator, n=256, seed=7)
            idx = torch.randint(len(train), (64,))
            real = tr.data[idx]; fake = tr._fakes(64); alpha = torch.rand(64)
            g, _ = fast_per_sample_grads(tr.critic, real, fake, alpha, tr.objective, unit_index=None, num_units=None)
            norms = torch.sqrt(sum((v.flatten(1) ** 2).sum(1) for v in g.values()))
            print(f"{name} step {step}: label frac {pairs[:,1].mean():.4f} g_loss {np.mean(gl[-10:]):.2f} per-sample grad norm median {norms.median():.2f} max {norms.max():.2f} ({time.process_time()-t:.0f} s)", flush=True)
