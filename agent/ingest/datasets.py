"""Training-ready records from the catalog and its cache (no DICOM parsing here).

``load_labeled_volumes``, ``load_labeled_images_2d`` and ``load_fundus_images`` are what the
DP-GAN, k-SALSA and federation code call: they read only the catalog and the ``.npz`` cache
written by ``anonfed ingest``, and return records that carry a patient *key*, never an identifier
or a path.
"""

from __future__ import annotations

import logging

import numpy as np

from agent.config import SiteConfig
from agent.ingest.cache import ArrayCache
from agent.ingest.catalog import IMAGE_2D_KINDS, VOLUME_KINDS, Catalog
from agent.records import FundusImage, LabeledImage2D, LabeledVolume

log = logging.getLogger(__name__)

__all__ = ["IMAGE_2D_KINDS", "VOLUME_KINDS", "load_fundus_images", "load_labeled_images_2d", "load_labeled_volumes"]


def load_labeled_volumes(cfg: SiteConfig, *, angio_only: bool = False) -> list[LabeledVolume]:
    """Every catalogued volume that has a vessel label, in canonical (z, y, x) order.

    Parameters
    ----------
    angio_only
        Keep only TOF/angiography volumes (DICOM Angio Flag ``Y`` or "TOF" in the series
        description; NIfTI files with "tof" in the name).

    Raises
    ------
    IntegrityError
        If a cache entry the catalog refers to is missing (run ``anonfed ingest`` again).
    """
    if not _catalog_exists(cfg):
        return []
    cache = ArrayCache(cfg.state.cache)
    out: list[LabeledVolume] = []
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        rows = [r for r in catalog.live_series(*VOLUME_KINDS) if r.label_cache_key and (r.angio or not angio_only)]
    for row in rows:
        image_npz = cache.load(row.cache_key or "")
        label_npz = cache.load(row.label_cache_key or "")
        spacing = tuple(float(v) for v in image_npz["spacing"])
        out.append(
            LabeledVolume(
                patient_key=row.patient_key or "",
                image=image_npz["image"].astype(np.float32, copy=False),
                label=label_npz["label"].astype(np.uint8, copy=False),
                spacing_mm=spacing,  # type: ignore[arg-type]
            )
        )
    log.info("loaded %d labeled volumes", len(out))
    return out


def load_labeled_images_2d(cfg: SiteConfig) -> list[LabeledImage2D]:
    """Every catalogued single 2-D image that a DICOM SEG of 2-D images labels (the synthetic
    TOF export's Secondary Capture + SEG pairs come back this way), in file row/column order.

    Raises
    ------
    IntegrityError
        If a cache entry the catalog refers to is missing (run ``anonfed ingest`` again).
    """
    if not _catalog_exists(cfg):
        return []
    cache = ArrayCache(cfg.state.cache)
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        rows = [r for r in catalog.live_series(*IMAGE_2D_KINDS) if r.label_cache_key]
    out = [
        LabeledImage2D(
            patient_key=row.patient_key or "",
            image=cache.load(row.cache_key or "")["image"].astype(np.float32),
            label=cache.load(row.label_cache_key or "")["label"].astype(np.uint8, copy=False),
        )
        for row in rows
    ]
    log.info("loaded %d labeled 2-D images", len(out))
    return out


def load_fundus_images(cfg: SiteConfig, *, include_dicom: bool = True, graded_only: bool = False) -> list[FundusImage]:
    """Colour fundus photographs: PNG/JPEG files and (optionally) DICOM ophthalmic photographs.

    DICOM OP images carry no grade unless the grades CSV names them; ``graded_only`` drops
    images without a grade.

    Raises
    ------
    IntegrityError
        If a cache entry the catalog refers to is missing (run ``anonfed ingest`` again).
    """
    if not _catalog_exists(cfg):
        return []
    cache = ArrayCache(cfg.state.cache)
    kinds = ("fundus-image", "dicom-op") if include_dicom else ("fundus-image",)
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        rows = catalog.live_series(*kinds)
    out: list[FundusImage] = []
    for row in rows:
        if graded_only and row.grade is None:
            continue
        arrays = cache.load(row.cache_key or "")
        rgb = arrays["rgb"] if "rgb" in arrays else _to_rgb8(arrays["image"])
        if rgb is None:
            continue
        out.append(FundusImage(patient_key=row.patient_key or "", rgb=rgb, grade=row.grade))
    log.info("loaded %d fundus images", len(out))
    return out


def _catalog_exists(cfg: SiteConfig) -> bool:
    # Reading must not create an empty catalog as a side effect.
    if cfg.state.catalog.is_file():
        return True
    log.warning("site %s has no catalog yet; run `anonfed ingest --config ...` first", cfg.site_id)
    return False


def _to_rgb8(image: np.ndarray) -> np.ndarray | None:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        return None
    if image.dtype != np.uint8:
        hi = float(image.max()) or 1.0
        image = np.clip(image.astype(np.float64) * (255.0 / hi), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)
