"""Diagnostic (not a result): does a background-biased label output make vessels appear earlier?

Non-DP WGAN-GP, width 16, 400 train patients (same split and patches as dpgan_utility_many), B=64,
n_critic 2; generated label fraction (label > 0 after tanh) on 512 samples every 200 critic steps,
for the default init and for a label-channel bias of -1 (Hyperparameters.generator_label_bias).
Run from /work/main: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/dpgan/diag_label_bias.py
"""
import sys
import time

sys.path.insert(0, "benchmarks")
import numpy as np

from dpgan_utility import phantom_volumes
from agent.models import GanSpec
from agent.models.weights import sample_from_generator
from agent.patching.patches import extract_patches
from agent.training.gan_trainer import GanTrainer, Hyperparameters

STEPS, EVERY = 1600, 200
vols = phantom_volumes(patients=440, volume_size=48, seed=0)
order = np.random.default_rng(0).permutation(len(vols))
train = extract_patches([vols[i] for i in order[40:]], size=32, per_volume=48, vessel_fraction=0.5,
                        rng=np.random.default_rng(0))
print(f"real label fraction {(train.images[:, 1] > 0).mean():.4f}", flush=True)
for bias in (None, -1.0):
    hp = Hyperparameters(n_critic=2, critic_lr=2e-4, generator_lr=2e-4, beta1=0.5, beta2=0.9, batch_size=64,
                         generator_label_bias=bias)
    tr = GanTrainer(GanSpec("wgan-gp", 32, width=16), train.images, train.patient_index, hp=hp, dp=None, seed=0)
    c0 = time.process_time()
    fracs = []
    for step in range(1, STEPS + 1):
        tr.train_iteration()
        if step % EVERY == 0:
            fracs.append(f"{step}:{sample_from_generator(tr.generator, n=512, seed=7)[:, 1].mean():.4f}")
    print(f"label bias {bias}: label fraction at critic step {' '.join(fracs)} ({time.process_time() - c0:.0f} CPU s)", flush=True)
