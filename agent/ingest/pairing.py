"""Attach labels and grades to catalogued images (runs at the end of every ingest).

* DICOM SEG -> the series it references (label volume built on the series grid, cached under a
  key derived from both content hashes, so an unchanged pair is never recomputed).
* DICOM SEG of 2-D images -> each single 2-D image (Secondary Capture, other 2-D, OP) one of its
  frames was derived from, matched by keyed SOP Instance UID; rows and columns must agree. The
  image becomes a labelled 2-D image (:func:`agent.ingest.datasets.load_labeled_images_2d`).
* NIfTI ``*_label`` (or manifest label) -> its image, by the pair token computed at ingest
  (see :mod:`agent.ingest.nifti_files` for the rule); shape and canonical affine must agree.
* Grades CSV rows -> fundus images (see :mod:`agent.ingest.fundus_files`).

Everything here is recomputed from the catalog on each run (quarantine entries of stage
``pair`` are replaced), so fixing a CSV or adding the missing image takes effect on the next run.
Units excluded by a pairing problem get status ``held``. The previous run's pairing results are
reset and the new ones written in one transaction, so a crash never leaves a half-paired catalog.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import numpy as np

from agent.ingest import nifti_files
from agent.ingest.cache import ArrayCache, combined_key
from agent.ingest.catalog import IMAGE_2D_KINDS, Catalog, SeriesRow
from agent.ingest.dicom_seg import label_for_image, label_for_stack
from agent.ingest.fundus_files import read_grades
from agent.ingest.nifti_files import ManifestRow
from agent.ingest.quarantine import Quarantined, Reason
from agent.ingest.series_assembly import StackGeometry, to_canonical

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Problem:
    path_key: str
    path_enc: bytes | None  # None: look it up in the files table
    reason: Reason
    detail: str


class Pairing:
    """Collects pair-stage quarantine entries and series updates, then writes them at once."""

    def __init__(self, catalog: Catalog, cache: ArrayCache, run_id: int) -> None:
        self.catalog = catalog
        self.cache = cache
        self.run_id = run_id
        self.problems: list[_Problem] = []
        self.updates: dict[str, dict] = {}
        self.label_volumes_built = 0
        self.image_labels_built = 0

    def _hold(self, series: SeriesRow, reason: Reason, detail: str) -> None:
        for path_key in self.catalog.series_files(series.key):
            self.problems.append(_Problem(path_key, None, reason, detail))
        self.updates.setdefault(series.key, {})["status"] = "held"

    def pair_segs(self) -> None:
        targets = {s.key: s for s in self.catalog.live_series("dicom-series", include_held=True)}
        targets |= {s.pair_token: s for s in self.catalog.live_series("dicom-enhanced", include_held=True) if s.pair_token}
        segs = self.catalog.live_series("dicom-seg", include_held=True)
        self._pair_image_segs([s for s in segs if "frame_images" in (s.geometry or {})])
        for seg in segs:
            if "frame_images" in (seg.geometry or {}):
                continue
            target = targets.get(seg.ref_key or "")
            if target is None:
                self._hold(seg, Reason.ORPHAN_LABEL, "the series this SEG references is not in the catalog")
                continue
            if target.patient_key != seg.patient_key:
                self._hold(seg, Reason.LABEL_MISMATCH, "SEG and its referenced series belong to different patients")
                continue
            if "label_key" in self.updates.get(target.key, {}):
                self._hold(seg, Reason.LABEL_MISMATCH, "the referenced series already has a SEG label")
                continue
            pair_key = combined_key("seg-label-v1", seg.cache_key or "", target.cache_key or "")
            if not self.cache.has(pair_key):
                try:
                    geometry = StackGeometry.from_json(target.geometry or {})
                    label_kji = label_for_stack(self.cache.load(seg.cache_key or ""), geometry)
                except Quarantined as exc:
                    self._hold(seg, exc.reason, exc.detail)
                    continue
                label, _, _ = to_canonical(label_kji, geometry.affine_lps)
                self.cache.save(pair_key, label=label)
                self.label_volumes_built += 1
            self.updates.setdefault(target.key, {}).update(label_key=seg.key, label_cache_key=pair_key)

    def _pair_image_segs(self, segs: list[SeriesRow]) -> None:
        """Pair SEGs of 2-D images with the images their frames were derived from (all or none per SEG)."""
        images = self.catalog.units_by_instance(*IMAGE_2D_KINDS)
        for seg in segs:
            frames_of: dict[str, list[int]] = {}
            for index, sop_key in enumerate((seg.geometry or {})["frame_images"]):
                frames_of.setdefault(sop_key, []).append(index)
            missing = sum(sop_key not in images for sop_key in frames_of)
            if missing:
                self._hold(seg, Reason.ORPHAN_LABEL,
                           f"{missing} of the {len(frames_of)} 2-D image(s) this SEG references are not in the catalog")
                continue
            targets = [(images[sop_key], indices) for sop_key, indices in frames_of.items()]
            problem = self._image_seg_problem(seg, [t for t, _ in targets])
            if problem is not None:
                self._hold(seg, *problem)
                continue
            built: dict[str, str] = {}
            try:
                for target, indices in targets:
                    pair_key = combined_key("seg-image-label-v1", seg.cache_key or "", target.cache_key or "", *map(str, indices))
                    if not self.cache.has(pair_key):
                        label = label_for_image(self.cache.load(seg.cache_key or ""), indices, tuple(target.shape or ()))
                        self.cache.save(pair_key, label=label)
                        self.image_labels_built += 1
                    built[target.key] = pair_key
            except Quarantined as exc:
                self._hold(seg, exc.reason, exc.detail)
                continue
            for target_key, pair_key in built.items():
                self.updates.setdefault(target_key, {}).update(label_key=seg.key, label_cache_key=pair_key)

    def _image_seg_problem(self, seg: SeriesRow, targets: list[SeriesRow]) -> tuple[Reason, str] | None:
        """Why a SEG of 2-D images cannot label its (catalogued) images, from the catalog alone; None if it can."""
        rows_cols = tuple((seg.shape or [0, 0, 0])[1:])
        for target in targets:
            if target.patient_key != seg.patient_key:
                return Reason.LABEL_MISMATCH, "SEG and the image it references belong to different patients"
            if "label_key" in self.updates.get(target.key, {}):
                return Reason.LABEL_MISMATCH, "the referenced image already has a SEG label"
            if tuple(target.shape or ()) != rows_cols:
                return Reason.LABEL_MISMATCH, (f"SEG frames are {rows_cols} (rows, columns) but the image they reference is "
                                               f"{tuple(target.shape or ())}")
        return None

    def pair_nifti(self, manifests: list[ManifestRow], path_keys: dict[Path, str]) -> None:
        images = {s.pair_token: s for s in self.catalog.live_series("nifti-image", include_held=True)}
        for label in self.catalog.live_series("nifti-label", include_held=True):
            image = images.get(label.pair_token)
            if image is None:
                self._hold(label, Reason.ORPHAN_LABEL, "label volume has no image (naming rule <stem>_label or manifest)")
                continue
            a = np.asarray((image.geometry or {}).get("affine_ras"))
            b = np.asarray((label.geometry or {}).get("affine_ras"))
            if not nifti_files.same_grid(tuple(image.shape or ()), a, tuple(label.shape or ()), b):
                self._hold(label, Reason.LABEL_MISMATCH, f"label shape/affine {label.shape} differs from image {image.shape}")
                continue
            self.updates.setdefault(image.key, {}).update(label_key=label.key, label_cache_key=label.cache_key)
        for row in manifests:
            if row.label is not None and not row.label.is_file():
                key = path_keys.get(row.image)
                if key is not None:
                    self.problems.append(_Problem(key, None, Reason.MISSING_LABEL, "manifest names a label file that does not exist"))
                    series = self._series_of_file(key)
                    if series is not None:
                        self.updates.setdefault(series, {})["status"] = "held"

    def apply_grades(self, grades_csvs: list[Path]) -> None:
        secrets = self.catalog.secrets
        for csv_path in grades_csvs:
            try:
                good, bad = read_grades(csv_path)
            except Quarantined as exc:
                self.problems.append(_Problem(secrets.path_key(csv_path), secrets.encrypt_path(csv_path), exc.reason, exc.detail))
                continue
            for row in bad:
                key = secrets.path_key(row.path)
                self.problems.append(_Problem(key, secrets.encrypt_path(row.path), row.reason, row.detail))
                series = self._series_of_file(key)
                if series is not None:
                    self.updates.setdefault(series, {})["status"] = "held"
            for path, grade in good.items():
                series = self._series_of_file(secrets.path_key(path))
                if series is None:
                    continue
                fields = self.updates.setdefault(series, {})
                fields["grade"] = grade.grade
                if grade.patient:
                    fields["patient_key"] = secrets.patient_key(grade.patient)

    def _series_of_file(self, path_key: str) -> str | None:
        row = self.catalog.conn.execute("SELECT series_key FROM files WHERE path_key=? AND status='ok'", (path_key,)).fetchone()
        return row[0] if row and row[0] else None

    def write(self) -> None:
        """Replace the pair-stage quarantine and apply the collected series updates (one transaction)."""
        with self.catalog.transaction() as c:
            c.execute("UPDATE series SET status='ok' WHERE status='held'")
            c.execute("UPDATE series SET label_key=NULL, label_cache_key=NULL, grade=NULL")
            self.catalog.clear_quarantine(c, stage="pair")
            for p in self.problems:
                enc = p.path_enc or _path_enc(c, p.path_key)
                if enc is None:
                    continue
                self.catalog.add_quarantine(c, path_key=p.path_key, path_enc=enc, reason=p.reason.value, detail=p.detail,
                                            content_hash=_hash(c, p.path_key), stage="pair", run_id=self.run_id)
            for key, fields in self.updates.items():
                if "patient_key" in fields:
                    self.catalog.upsert_patient(c, fields["patient_key"], "grades-csv")
                self.catalog.set_series_fields(c, key, **fields)
        for p in self.problems:
            log.warning("quarantined at pairing: %s (file %s)", p.reason.value, p.path_key[:12])


def _path_enc(c: sqlite3.Connection, key: str) -> bytes | None:
    row = c.execute("SELECT path_enc FROM files WHERE path_key=?", (key,)).fetchone()
    return row[0] if row else None


def _hash(c: sqlite3.Connection, key: str) -> str | None:
    row = c.execute("SELECT content_hash FROM files WHERE path_key=?", (key,)).fetchone()
    return row[0] if row else None
