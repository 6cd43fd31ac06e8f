"""``anonfed ksalsa``: make a k-anonymous release of the site's fundus photographs, at the site."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``anonfed ksalsa``."""
    p = sub.add_parser(
        "ksalsa",
        help="release one synthetic average per group of >= k patients (k-SALSA or a baseline)",
        description=(
            "Cluster the site's fundus photographs into groups of at least k distinct patients and "
            "write one synthetic image per group (PNG, DICOM OP marked synthetic, and a manifest with "
            "each group's size and majority grade) under <state>/outputs/ksalsa/. k below the site's "
            "privacy.min_k is refused. Groups are formed as the site's privacy.ksalsa_groups says: "
            "nearest (published: similar patients together) or random (a shuffle with the site's secret "
            "seed; less membership leakage). k-SALSA and centroid need the site's StyleGAN and encoder "
            "checkpoints (default <state>/models/stylegan.pt and encoder.pt)."
        ),
    )
    p.add_argument("--config", type=Path, required=True, help="site YAML")
    p.add_argument("--k", type=int, required=True, help="distinct patients per synthetic image (>= privacy.min_k)")
    p.add_argument("--method", default="ksalsa", choices=["ksalsa", "centroid", "k-same-pixel", "k-same-eigen"])
    p.add_argument("--steps", type=int, default=100, help="local style alignment steps per group (default 100)")
    p.add_argument("--run-id", default="local", help="run id recorded in the release and claim")
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--generator", type=Path, help="StyleGAN checkpoint (default <state>/models/stylegan.pt)")
    p.add_argument("--encoder", type=Path, help="ReStyle encoder checkpoint (default <state>/models/encoder.pt)")
    p.add_argument("--feature-weights", type=Path, help="VGG19 state dict to use instead of EfficientNet-Lite0")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--sign", action="store_true",
                   help="sign a k-anonymity claim and record it in the site's claim log (for releases shared outside a federated run)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from agent.config import load_site_config
    from agent.ksalsa.baselines import Method
    from agent.ksalsa.task import KsalsaRequest, SiteModels, run_ksalsa_task

    site = load_site_config(args.config)
    default = SiteModels.default(site)
    models = SiteModels(
        generator=args.generator or default.generator, encoder=args.encoder or default.encoder,
        feature_network="vgg19" if args.feature_weights else default.feature_network,
        feature_weights=args.feature_weights,
    )
    request = KsalsaRequest(args.run_id, args.round, k=args.k, method=Method(args.method), steps=args.steps)
    outcome = run_ksalsa_task(site, request, models=models, device=args.device, sign=args.sign)
    if outcome.claim is not None:
        outcome.claim.commit()
    release = outcome.release
    print(f"released {len(release.images)} {release.method} images (k={release.k}, min_k={release.min_k}, "
          f"{release.grouping} groups) to {release.folder}")
    print("distinct patients per image: " + ", ".join(str(n) for n in release.cluster_sizes))
    print(f"images sha256: {release.images_sha256}" + ("; claim recorded in the site log" if outcome.claim else ""))
    return 0
