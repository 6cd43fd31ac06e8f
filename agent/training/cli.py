"""``anonfed train``: a local, checkpointed DP-GAN (or labelled non-DP) training run at a site."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``anonfed`` parser (heavy imports happen in the handler)."""
    p = sub.add_parser(
        "train",
        help="train a DP-GAN (image+label patches) locally; resumable; exports synthetic samples",
        description=(
            "Train a DCGAN / WGAN-GP / WGAN-GP-SN on the site's labelled TOF patches. With a target "
            "epsilon the critic is trained with DP-SGD (patient-level by default); the steps are charged "
            "to the site's durable accountant before they run and the site's max_epsilon is enforced. "
            "Without DP (--no-dp, needs gan-nodp in the site policy) the model is labelled epsilon = "
            "infinity. Re-running with the same --out resumes after a kill. Outputs: checkpoint, loss "
            "log, weights NPZ, synthetic pairs as NPZ, NIfTI and PNG grid."
        ),
    )
    p.add_argument("--config", type=Path, required=True, help="site YAML file")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, logs, samples)")
    p.add_argument("--run-config", type=Path, help="training YAML (keys as in agent.training.local_run.RunConfig)")
    p.add_argument("--patches", type=Path, help="patch set NPZ (else cut from the site's ingested volumes)")
    p.add_argument("--architecture", choices=["dcgan", "wgan-gp", "wgan-gp-sn"])
    p.add_argument("--patch-size", type=int, choices=[32, 64, 96])
    p.add_argument("--steps", type=int, help="critic iterations (= DP accountant steps)")
    p.add_argument("--epsilon", type=float, dest="target_epsilon", help="target epsilon for the whole run")
    p.add_argument("--no-dp", action="store_true", help="train WITHOUT differential privacy (epsilon = infinity)")
    p.add_argument("--unit", choices=["patient", "image"], help="privacy unit (default: the site policy's)")
    p.add_argument("--batch-patients", type=int, dest="expected_batch_patients", help="expected patients per step")
    p.add_argument("--max-grad-norm", type=float, help="per-unit clipping norm C")
    p.add_argument("--seed", type=int, help="initialisation seed (DP noise and sampling always use OS randomness)")
    p.add_argument("--dataset-id", help="accountant dataset name (default tof)")
    p.add_argument("--samples", type=int, dest="sample_count", help="synthetic pairs to export at the end")
    p.add_argument("--checkpoint-every", type=int, help="steps per checkpoint and per budget reservation")
    p.add_argument("--lr-decay", choices=["linear", "cosine"], help="decay both learning rates to 0 over the run "
                   "(from --lr-decay-start of it; default: constant)")
    p.add_argument("--lr-decay-start", type=float, help="fraction of the run after which the decay begins (default 0.5)")
    p.add_argument("--generator-ema", type=float, help="export samples from an EMA of the generator's weights with this "
                   "decay (e.g. 0.999; no privacy cost; default: the raw generator)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    import numpy as np

    from agent.config import load_site_config
    from agent.training.local_run import load_run_config, train_locally

    site = load_site_config(args.config)
    keys = ["architecture", "patch_size", "steps", "target_epsilon", "unit", "expected_batch_patients",
            "max_grad_norm", "seed", "dataset_id", "sample_count", "checkpoint_every", "generator_ema",
            "lr_decay", "lr_decay_start"]
    overrides = {k: getattr(args, k) for k in keys}
    if args.no_dp:
        overrides["target_epsilon"] = "inf"
    run = load_run_config(args.run_config, overrides)
    patches = _load_patches(site, args.patches, run)
    summary = train_locally(
        site, images=patches.images, patient_index=np.asarray(patches.patient_index), num_patients=patches.num_patients,
        run=run, out_dir=args.out, progress=not args.no_progress,
    )
    print(f"trained {summary.steps} critic steps: {summary.privacy.describe()}")
    for kind, path in sorted(summary.files.items()):
        print(f"  {kind:<12} {path}")
    return 0


def _load_patches(site, path, run):
    import numpy as np

    from agent.patching.patches import PatchSet, extract_patches

    if path is not None:
        return PatchSet.load_npz(path)
    from agent.ingest.datasets import load_labeled_volumes

    volumes = load_labeled_volumes(site)
    return extract_patches(volumes, size=run.patch_size, per_volume=run.patches_per_volume, rng=np.random.default_rng(run.seed))
