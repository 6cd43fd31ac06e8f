"""DP critic step time / non-DP critic step time, same WGAN-GP critic, batch, penalty (issue 3, item 5).

Both steps: fakes from the generator (no grad), the full critic loss with gradient penalty, an Adam
update. The non-DP step is ordinary autograd (double backward for the penalty). The DP step
computes exact per-unit gradients, then Opacus' DPOptimizer clips, adds noise and steps. Variants:

* ``vmap``: the generic torch.func engine, ``vmap(grad_and_value(loss))`` (the 12x baseline);
* ``fast``: the explicit input-gradient engine (one batched matmul per layer per sample);
* ``fast-patient``: the fast engine with 8 patients x 8 patches summed per patient before clipping.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp_step_speed.py [--patch 32] [--batch 64] [--reps 10]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from agent.dp.critic_loss import CriticObjective, batch_critic_losses
from agent.dp.mechanism import make_dp_optimizer, private_step
from agent.dp.per_sample_grads import fast_per_sample_grads, reference_per_sample_grads
from agent.models import GanSpec, build_pair


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--arch", default="wgan-gp", choices=["wgan-gp", "wgan-gp-sn", "dcgan"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--skip-vmap", action="store_true", help="skip the slow generic engine")
    args = ap.parse_args()

    spec = GanSpec(args.arch, args.patch, width=args.width)
    gen, critic = build_pair(spec, seed=0)
    objective = CriticObjective(spec.architecture.uses_gradient_penalty)
    rng = torch.Generator().manual_seed(0)
    real = torch.rand(args.batch, 2, args.patch, args.patch, generator=rng) * 2 - 1
    b = args.batch

    def fakes_and_alpha() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            fake = gen(gen.sample_latents(b, rng))
        return fake, torch.rand(b, generator=rng)

    opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))

    def nondp_step() -> None:
        fake, alpha = fakes_and_alpha()
        opt.zero_grad(set_to_none=True)
        batch_critic_losses(critic, real, fake, alpha, objective).mean().backward()
        opt.step()

    dp_opt = make_dp_optimizer(
        torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9)),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_units=b,
        generator=torch.Generator().manual_seed(1),
    )

    def dp_step(engine, unit_index=None, num_units=None) -> None:
        fake, alpha = fakes_and_alpha()
        grads, _ = engine(critic, real, fake, alpha, objective, unit_index=unit_index, num_units=num_units)
        if critic.spectral_norm:
            critic.update_spectral_vectors()
        private_step(dp_opt, critic, grads)

    n_params = sum(p.numel() for p in critic.parameters())
    print(f"critic {args.arch} {args.patch}x{args.patch}, {n_params / 1e6:.2f} M params, batch {b}, "
          f"threads {torch.get_num_threads()}, median of {args.reps}")
    t_ref = _time(nondp_step, args.reps)
    print(f"non-DP step (autograd, double backward): {t_ref * 1e3:8.1f} ms")
    patients = torch.arange(b) // max(1, b // 8)
    variants = [("fast (per-sample, image unit)", lambda: dp_step(fast_per_sample_grads))]
    variants.append(("fast-patient (8 patients)", lambda: dp_step(fast_per_sample_grads, patients, int(patients.max()) + 1)))
    if not args.skip_vmap:
        variants.append(("vmap(grad) reference", lambda: dp_step(reference_per_sample_grads)))
    for name, fn in variants:
        t = _time(fn, args.reps if "vmap" not in name else max(2, args.reps // 4))
        print(f"DP step {name:<32}: {t * 1e3:8.1f} ms  ratio {t / t_ref:5.2f}x")


if __name__ == "__main__":
    main()
