"""``anonfed stylegan ...``: train a site-only StyleGAN2 on the site's fundus images, sample it, and
train the inversion encoder for k-SALSA. Weights from these commands never leave the site."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``stylegan`` (train, sample, train-encoder) to the ``anonfed`` parser."""
    p = sub.add_parser(
        "stylegan",
        help="StyleGAN2 and its W+ encoder on the site's fundus images (site-only, for k-SALSA)",
        description=(
            "Train a StyleGAN2 (mode local: no DP, weights stay at the site; their checkpoint is marked "
            "release_policy=site-only and the export path refuses it), sample it, and train the ReStyle "
            "encoder that inverts images into W+. Re-running train with the same checkpoint resumes. "
            "Federated DP training runs through the coordinator's stylegan-dp rounds instead."
        ),
    )
    cmds = p.add_subparsers(dest="stylegan_command", metavar="STEP", required=True)

    t = cmds.add_parser("train", help="train or resume a local StyleGAN2 on the ingested fundus images")
    t.add_argument("--config", type=Path, required=True, help="site YAML file")
    t.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file (resumed if it exists)")
    t.add_argument("--steps", type=int, required=True, help="total training steps (not additional)")
    t.add_argument("--preset", default="small64", help="architecture: small64 (CPU), cuda256, cuda512")
    t.add_argument("--batch", type=int, default=16, help="images per step")
    t.add_argument("--seed", type=int, default=0, help="initialisation, latents, augmentation")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    t.set_defaults(handler=_train)

    s = cmds.add_parser("sample", help="write PNG samples of a checkpoint's EMA generator (at the site)")
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True, help="folder for PNG files")
    s.add_argument("--count", type=int, default=16)
    s.add_argument("--truncation", type=float, default=1.0, help="truncation psi (1 = none)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler=_sample)

    e = cmds.add_parser("train-encoder", help="train the W+ encoder for a generator checkpoint")
    e.add_argument("--config", type=Path, required=True, help="site YAML file")
    e.add_argument("--checkpoint", type=Path, required=True, help="StyleGAN checkpoint")
    e.add_argument("--encoder", type=Path, required=True, help="encoder checkpoint (resumed if it exists)")
    e.add_argument("--steps", type=int, required=True, help="total encoder steps")
    e.add_argument("--features", default="efficientnet-lite0", help="feature network for the perceptual loss")
    e.add_argument("--feature-weights", type=Path, help="weights file for --features vgg19")
    e.add_argument("--feature-weight", type=float, default=0.8, help="weight of the perceptual term (0 = pixels only)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(handler=_train_encoder)


def _site_images(config: Path, resolution: int):
    from agent.config import load_site_config
    from agent.ingest.datasets import load_fundus_images
    from agent.stylegan.data import fundus_to_tensors

    return fundus_to_tensors(load_fundus_images(load_site_config(config)), resolution=resolution)


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agent.config import load_site_config
    from agent.stylegan.config import TrainingConfig, preset
    from agent.stylegan.site_round import run_stylegan_local

    arch = preset(args.preset)
    images, patients = _site_images(args.config, arch.resolution)
    bar = tqdm(total=args.steps, unit="step")

    def progress(step: int, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        if metrics:
            bar.set_postfix(g_loss=f"{metrics['g_loss']:.3f}", augment_p=f"{metrics['augment_p']:.2f}")

    try:
        path = run_stylegan_local(site=load_site_config(args.config), images=images, patient_index=patients,
                                  steps=args.steps, arch=arch, train=TrainingConfig(batch_size=args.batch),
                                  seed=args.seed, checkpoint=args.checkpoint, device=args.device,
                                  checkpoint_every=args.checkpoint_every, progress=progress)
    finally:
        bar.close()
    print(f"local StyleGAN checkpoint (site-only): {path}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from agent.stylegan.checkpoint import generator_from_checkpoint, load_checkpoint
    from agent.stylegan.data import tensor_to_uint8

    G = generator_from_checkpoint(load_checkpoint(args.checkpoint))
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        images = G(G.sample_z(args.count, generator=g), truncation_psi=args.truncation, noise_mode="random", generator=g)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(tensor_to_uint8(images)):
        Image.fromarray(rgb).save(args.out / f"sample-{i:04d}.png")
    print(f"wrote {args.count} samples to {args.out}")
    return 0


def _train_encoder(args: argparse.Namespace) -> int:
    from agent.features.loader import load_feature_extractor
    from agent.inversion.losses import ReconstructionLoss, ReconstructionWeights
    from agent.inversion.train import EncoderTrainer, EncoderTraining
    from agent.stylegan.checkpoint import generator_from_checkpoint, load_checkpoint

    G = generator_from_checkpoint(load_checkpoint(args.checkpoint))
    images, _ = _site_images(args.config, G.cfg.resolution)
    features = (load_feature_extractor(args.features, weights_path=args.feature_weights)
                if args.feature_weight else None)
    loss = ReconstructionLoss(features, ReconstructionWeights(feature=args.feature_weight))
    trainer = EncoderTrainer(G, loss, EncoderTraining(), seed=args.seed)
    if args.encoder.exists():
        trainer.load(args.encoder)
    metrics = trainer.fit(images, steps=args.steps, checkpoint_path=args.encoder)
    print(f"encoder at step {trainer.step_count}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0
