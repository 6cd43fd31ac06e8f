"""Turn one group of files into one catalog unit (or into quarantine entries).

A *group* is what must be ingested together: all single-frame instances of one DICOM series, or
one file for everything else. Each function here decodes, checks, writes the cache entry and
returns an :class:`Outcome` describing the catalog rows; the pipeline writes an outcome in one
transaction, so the cache entry always exists before anything refers to it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.ingest import dicom_files, fundus_files, nifti_files
from agent.ingest.cache import ArrayCache, combined_key
from agent.ingest.dicom_files import DicomHeader, DicomRole
from agent.ingest.dicom_seg import image_seg_frames, is_image_seg, seg_frames
from agent.ingest.pseudonym import SiteSecrets
from agent.ingest.quarantine import Quarantined, Reason
from agent.ingest.scanner import FileFormat, unknown_reason
from agent.ingest.series_assembly import stack_order, to_canonical

_ROLE_KIND = {
    DicomRole.SLICE: "dicom-series",
    DicomRole.ENHANCED: "dicom-enhanced",
    DicomRole.SEG: "dicom-seg",
    DicomRole.OP: "dicom-op",
    DicomRole.SC: "dicom-sc",
    DicomRole.IMAGE_2D: "dicom-2d",
    DicomRole.MULTIFRAME: "dicom-multiframe",
    DicomRole.NON_IMAGE: "dicom-non-image",
}


@dataclasses.dataclass
class Member:
    """One file of a group, with the bytes read for it (read once, read-only)."""

    path: Path
    path_key: str
    size: int
    mtime_ns: int
    content_hash: str
    fmt: FileFormat
    data: bytes


@dataclasses.dataclass
class FileOutcome:
    member: Member
    kind: str
    status: str  # "ok" or "quarantined"
    reason: Reason | None = None
    detail: str = ""
    sop_key: str | None = None
    slice_index: int | None = None
    duplicate: bool = False


@dataclasses.dataclass
class Outcome:
    """Catalog rows for one group."""

    files: list[FileOutcome]
    series: dict[str, Any] | None = None
    patient: tuple[str, str] | None = None  # (key, id source)
    study_key: str | None = None


@dataclasses.dataclass(frozen=True)
class UnitContext:
    secrets: SiteSecrets
    cache: ArrayCache
    config_csvs: dict[Path, str]  # resolved CSV path -> kind ("grades-csv" / "nifti-manifest")
    pair_token_of: Callable[[Path], str]  # NIfTI file -> token shared by an image and its label
    manifest_patient: Callable[[Path], str | None]
    manifest_is_label: Callable[[Path], bool]


def series_group_key(secrets: SiteSecrets, series_uid: str) -> str:
    """Group (and series) key of a single-frame DICOM series."""
    return "s" + secrets.uid_key("series", series_uid)


def failed(member: Member, kind: str, exc: Quarantined) -> Outcome:
    return Outcome([FileOutcome(member, kind, "quarantined", exc.reason, exc.detail)])


def ingest_single_file(member: Member, ctx: UnitContext) -> Outcome:
    """Ingest a file that forms a unit on its own (anything but a slice of a DICOM series)."""
    if member.fmt is FileFormat.DICOM:
        return _dicom_file(member, ctx)
    if member.fmt is FileFormat.NIFTI:
        return _nifti_file(member, ctx)
    if member.fmt in (FileFormat.PNG, FileFormat.JPEG):
        return _fundus_file(member, ctx)
    if member.fmt is FileFormat.CSV and member.path in ctx.config_csvs:
        return Outcome([FileOutcome(member, ctx.config_csvs[member.path], "ok")])
    detail = "CSV not named in the site config (fundus_grades_csv / nifti_manifest)" if member.fmt is FileFormat.CSV else "not DICOM, NIfTI, PNG or JPEG"
    reason = Reason.UNKNOWN_FORMAT if member.fmt is FileFormat.CSV else unknown_reason(member.path.name)
    return failed(member, "unknown", Quarantined(reason, detail))


def _patient(ctx: UnitContext, header: DicomHeader) -> tuple[str, str]:
    # PatientID first; a study UID keys an anonymised study (each such study counts as one patient).
    if header.patient_id:
        return ctx.secrets.patient_key(header.patient_id), "patient-id"
    if header.study_uid:
        return ctx.secrets.patient_key("study:" + header.study_uid), "study-uid"
    raise Quarantined(Reason.MISSING_PATIENT_ID, "no PatientID and no StudyInstanceUID to key the patient on")


def _study_key(ctx: UnitContext, header: DicomHeader, patient_key: str) -> str:
    return ctx.secrets.uid_key("study", header.study_uid or "patient:" + patient_key)


def _dicom_file(member: Member, ctx: UnitContext) -> Outcome:
    kind = "dicom"
    try:
        ds = dicom_files.parse(member.data, with_pixels=True)
        header = dicom_files.header_of(ds)
        kind = _ROLE_KIND[header.role]
        if header.role is DicomRole.NON_IMAGE:
            return Outcome([FileOutcome(member, kind, "ok")])
        patient_key, source = _patient(ctx, header)
        series: dict[str, Any] = {
            "key": "u" + member.path_key,
            "kind": kind,
            "modality": header.modality,
            "angio": int(header.angio),
            "patient_key": patient_key,
            "study_key": _study_key(ctx, header, patient_key),
            "cache_key": member.content_hash,
        }
        if header.role is DicomRole.SEG and is_image_seg(ds):
            arrays, sources = image_seg_frames(ds)
            # which image each frame labels, keyed like the images' own instance keys
            frame_images = [ctx.secrets.uid_key("instance", uid) for uid in sources]
            series.update(shape=list(arrays["frames"].shape), geometry={"frame_images": frame_images})
        elif header.role is DicomRole.SEG:
            if not header.referenced_series_uid:
                raise Quarantined(Reason.ORPHAN_LABEL, "SEG has no Referenced Series Sequence")
            arrays = seg_frames(ds)
            series.update(ref_key=series_group_key(ctx.secrets, header.referenced_series_uid), shape=list(arrays["frames"].shape))
        elif header.role is DicomRole.ENHANCED:
            pixels = dicom_files.decode_pixels(ds)
            planes = dicom_files.frame_planes(ds)
            order, geometry = stack_order(planes, rows=[header.rows] * len(planes), cols=[header.cols] * len(planes))
            if pixels.ndim != 3 or pixels.shape[0] != len(planes):
                raise Quarantined(Reason.UNSUPPORTED_IMAGE, f"enhanced object with pixel shape {pixels.shape} is not a grey-level stack")
            volume, spacing, _ = to_canonical(dicom_files.rescaled(ds, pixels[order]), geometry.affine_lps)
            arrays = {"image": volume, "spacing": np.asarray(spacing)}
            series.update(shape=list(volume.shape), spacing=list(spacing), geometry=geometry.to_json())
            if header.series_uid:  # lets a SEG that references this series find it
                series["pair_token"] = series_group_key(ctx.secrets, header.series_uid)
        else:
            pixels = dicom_files.decode_pixels(ds)
            arrays = {"image": pixels}
            series.update(shape=list(pixels.shape))
        ctx.cache.save(member.content_hash, **arrays)
        sop_key = ctx.secrets.uid_key("instance", header.sop_uid) if header.sop_uid else None
        return Outcome([FileOutcome(member, kind, "ok", sop_key=sop_key)], series, (patient_key, source), series["study_key"])
    except Quarantined as exc:
        return failed(member, kind, exc)


def ingest_dicom_series(members: list[Member], ctx: UnitContext, series_key: str) -> Outcome:
    """Assemble the single-frame instances of one series into one volume.

    Files that fail on their own (truncated, undecodable) are quarantined alone; copies of the
    same SOP instance are catalogued as duplicates and used once; if the remaining slices do not
    form a regular stack, every one of them is quarantined as ``inconsistent-slices``.
    """
    outcomes: list[FileOutcome] = []
    slices: list[tuple[Member, DicomHeader, np.ndarray, Any]] = []
    seen_sops: dict[str, Member] = {}
    duplicates: list[tuple[Member, str]] = []  # further copies of an SOP instance already seen
    for member in sorted(members, key=lambda m: m.content_hash):
        try:
            ds = dicom_files.parse(member.data, with_pixels=True)
            header = dicom_files.header_of(ds)
            if header.role is not DicomRole.SLICE:
                raise Quarantined(Reason.INCONSISTENT_SLICES, f"file changed role to {header.role.value} within a slice series")
            pixels = dicom_files.decode_pixels(ds)
            if pixels.ndim != 2:
                raise Quarantined(Reason.UNSUPPORTED_IMAGE, f"slice with pixel shape {pixels.shape} is not grey-level 2-D")
        except Quarantined as exc:
            outcomes.append(FileOutcome(member, "dicom-series", "quarantined", exc.reason, exc.detail))
            continue
        sop_key = ctx.secrets.uid_key("instance", header.sop_uid or member.content_hash)
        if sop_key in seen_sops:
            duplicates.append((member, sop_key))
            continue
        seen_sops[sop_key] = member
        slices.append((member, header, dicom_files.rescaled(ds, pixels), sop_key))
    if not slices:
        return Outcome(outcomes)
    try:
        order, geometry = stack_order(
            [s[1].plane for s in slices], rows=[s[1].rows for s in slices], cols=[s[1].cols for s in slices]  # type: ignore[misc]
        )
        patient_key, source = _patient(ctx, slices[0][1])
    except Quarantined as exc:
        outcomes += [FileOutcome(s[0], "dicom-series", "quarantined", exc.reason, exc.detail) for s in slices]
        outcomes += [FileOutcome(m, "dicom-series", "quarantined", exc.reason, exc.detail) for m, _ in duplicates]
        return Outcome(outcomes)
    volume_kji = np.stack([slices[i][2] for i in order])
    volume, spacing, _ = to_canonical(volume_kji, geometry.affine_lps)
    cache_key = combined_key("dicom-series-v1", *sorted(s[0].content_hash for s in slices))
    ctx.cache.save(cache_key, image=volume, spacing=np.asarray(spacing))
    for index, i in enumerate(order):
        outcomes.append(FileOutcome(slices[i][0], "dicom-series", "ok", sop_key=slices[i][3], slice_index=index))
    outcomes += [FileOutcome(m, "dicom-series", "ok", sop_key=k, duplicate=True) for m, k in duplicates]
    first = slices[0][1]
    series = {
        "key": series_key,
        "kind": "dicom-series",
        "modality": first.modality,
        "angio": int(any(s[1].angio for s in slices)),
        "patient_key": patient_key,
        "study_key": _study_key(ctx, first, patient_key),
        "cache_key": cache_key,
        "shape": list(volume.shape),
        "spacing": list(spacing),
        "geometry": geometry.to_json(),
    }
    return Outcome(outcomes, series, (patient_key, source), series["study_key"])


def _nifti_file(member: Member, ctx: UnitContext) -> Outcome:
    is_label = ctx.manifest_is_label(member.path) or nifti_files.is_label_name(member.path.name)
    kind = "nifti-label" if is_label else "nifti-image"
    try:
        vol = nifti_files.read_nifti(member.data, is_label=is_label)
    except Quarantined as exc:
        return failed(member, kind, exc)
    name = member.path.name
    stem = nifti_files.image_stem_of_label(name) if nifti_files.is_label_name(name) else nifti_files.nifti_stem(name)
    real_id = ctx.manifest_patient(member.path) or nifti_files.patient_from_name(stem)
    patient_key = ctx.secrets.patient_key(real_id)
    name = "label" if is_label else "image"
    ctx.cache.save(member.content_hash, **{name: vol.data_zyx, "spacing": np.asarray(vol.spacing_zyx)})
    series = {
        "key": "u" + member.path_key,
        "kind": kind,
        "modality": "MR",
        "angio": int("tof" in stem.lower()),
        "patient_key": patient_key,
        "study_key": ctx.secrets.uid_key("study", f"nifti:{real_id}"),
        "cache_key": member.content_hash,
        "shape": list(vol.data_zyx.shape),
        "spacing": list(vol.spacing_zyx),
        "geometry": {"affine_ras": vol.affine_ras.round(6).tolist()},
        "pair_token": ctx.pair_token_of(member.path),
    }
    return Outcome([FileOutcome(member, kind, "ok")], series, (patient_key, "file-name"), series["study_key"])


def _fundus_file(member: Member, ctx: UnitContext) -> Outcome:
    try:
        rgb = fundus_files.read_fundus(member.data)
    except Quarantined as exc:
        return failed(member, "fundus-image", exc)
    real_id = fundus_files.patient_from_file_name(member.path.name)
    patient_key = ctx.secrets.patient_key(real_id)
    ctx.cache.save(member.content_hash, rgb=rgb)
    series = {
        "key": "u" + member.path_key,
        "kind": "fundus-image",
        "modality": "OP",
        "patient_key": patient_key,
        "study_key": ctx.secrets.uid_key("study", f"fundus:{real_id}"),
        "cache_key": member.content_hash,
        "shape": list(rgb.shape),
    }
    return Outcome([FileOutcome(member, "fundus-image", "ok")], series, (patient_key, "file-name"), series["study_key"])
