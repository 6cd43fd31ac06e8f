"""THE ingest test: one folder with a phantom site, pydicom's and nibabel's real files and a dozen
kinds of broken inputs, ingested twice through the real CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.examples
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from agent.config import load_site_config
from agent.ingest.catalog import Catalog

from ingest_builders import mr_series, nifti, png, tree_hashes, write_config

MAX_FILE_BYTES = 16 * 1024**2
SITE_PACKAGES = Path(pydicom.__file__).parent.parent
PYDICOM_DATA = SITE_PACKAGES / "data_store" / "data"
NIBABEL_DATA = SITE_PACKAGES / "nibabel"

# pydicom-data files that are quarantined, and why (all others must be catalogued):
PYDICOM_DATA_QUARANTINED = {
    # two different SOP instances (lossy and lossless copies) at one slice position
    **{f"693_{v}.dcm": "inconsistent-slices" for v in ("J2KR", "UNCI", "UNCR")},
    **{f"MR2_{v}.dcm": "inconsistent-slices" for v in ("J2KI", "J2KR", "UNCI", "UNCR")},
    # same series as pydicom's examples_overlay.dcm, but 484 rows instead of 300
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "inconsistent-slices",
    # SEGs of a CT series that is not in the folder
    "liver.dcm": "orphan-label",
    "liver_expb.dcm": "orphan-label",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "truncated-pixel-data",
}
PYDICOM_EXAMPLES_QUARANTINED = {
    "no_meta.dcm": "not-dicom",  # one garbage element, no usable attribute
    "examples_overlay.dcm": "inconsistent-slices",  # see MR-SIEMENS-DICOM-WithOverlays.dcm above
}


def _broken_inputs(root: Path, rng: np.random.Generator) -> dict[Path, str]:
    """Write one or more files per failure mode; return {path: expected reason code}."""
    b = root / "broken"
    b.mkdir()
    expected: dict[Path, str] = {}
    (b / "junk.dcm").write_bytes(rng.bytes(3000))
    expected[b / "junk.dcm"] = "not-dicom"
    (b / "notes.txt").write_text("not an image\n" * 40)
    expected[b / "notes.txt"] = "unknown-format"
    (b / "empty.dcm").touch()
    expected[b / "empty.dcm"] = "empty-file"
    shutil.copy(pydicom.data.get_testdata_file("MR_truncated.dcm", download=False), b / "MR_truncated.dcm")
    expected[b / "MR_truncated.dcm"] = "truncated-pixel-data"
    vol = rng.integers(0, 1000, (5, 8, 8)).astype(np.int16)
    (p,) = mr_series(b / "nopix", vol[:1], patient_id="BRK-0001")
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    expected[p] = "missing-pixel-data"
    for name, ts, reason in (("mpeg", "1.2.840.10008.1.2.4.100", "unsupported-transfer-syntax"),
                             ("j2k", JPEG2000Lossless, "undecodable")):
        (p,) = mr_series(b / name, vol[:1], patient_id="BRK-0002")
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = ts
        ds.PixelData = encapsulate([rng.bytes(64)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.save_as(p, enforce_file_format=True)
        expected[p] = reason
    good_png = png(b / "cut.png", rng, size=64)
    good_png.write_bytes(good_png.read_bytes()[:200])
    expected[good_png] = "undecodable"
    for p in mr_series(b / "gap", vol, patient_id="BRK-0003", skip=[2]):
        expected[p] = "inconsistent-slices"
    for p in mr_series(b / "dup", vol[:3], patient_id="BRK-0004", repeat_position=1):
        expected[p] = "inconsistent-slices"
    nifti(b / "BRK-0005_s1_tof.nii.gz", rng.random((8, 8, 8), dtype=np.float32))
    expected[nifti(b / "BRK-0005_s1_tof_label.nii.gz", np.zeros((8, 8, 6), np.uint8))] = "label-mismatch"
    nan = rng.random((8, 8, 8), dtype=np.float32)
    nan[1, 2, 3] = np.nan
    expected[nifti(b / "BRK-0006_s1_tof.nii.gz", nan)] = "non-finite-values"
    expected[nifti(b / "BRK-0007_s1_tof_label.nii.gz", np.zeros((8, 8, 8), np.uint8))] = "orphan-label"
    with open(b / "huge.dcm", "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    expected[b / "huge.dcm"] = "file-too-large"
    (b / "loopdir").mkdir()
    os.symlink("..", b / "loopdir" / "back")
    expected[b / "loopdir" / "back"] = "directory-loop"
    os.symlink(b / "does-not-exist.dcm", b / "dangling.dcm")
    expected[b / "dangling.dcm"] = "unreadable"
    return expected


@pytest.fixture(scope="module")
def mixed(phantom_consortium, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    site = phantom_consortium.site_ids[0]
    shutil.copytree(phantom_consortium.site_dir(site), data / "phantom", symlinks=True)
    ex = data / "pydicom_examples"
    ex.mkdir()
    for name in pydicom.examples._DATASETS:
        src = pydicom.examples.get_path(name)
        shutil.copy(src, ex / (src.name if src.name != "DICOMDIR" else "DICOMDIR"))
    shutil.copytree(PYDICOM_DATA, data / "pydicom_data")
    nib_dir = data / "nibabel"
    nib_dir.mkdir()
    shutil.copy(NIBABEL_DATA / "tests" / "data" / "anatomical.nii", nib_dir)
    shutil.copy(NIBABEL_DATA / "nicom" / "tests" / "data" / "slicethickness_empty_string.dcm", nib_dir)
    expected = _broken_inputs(data, rng)
    # a graded PNG with an impossible grade, in the phantom's grades CSV
    grades = data / "phantom" / "fundus" / "grades.csv"
    bad_png = png(data / "phantom" / "fundus" / "png" / "BRK-0008_L_v1.png", rng, size=64)
    grades.write_text(grades.read_text() + "png/BRK-0008_L_v1.png,7,BRK-0008\n")
    expected[bad_png] = "bad-grade"
    # a second source paired by a manifest, one row naming a label that does not exist
    man = root / "manifest_source"
    nifti(man / "img_a.nii.gz", rng.random((6, 6, 6), dtype=np.float32))
    nifti(man / "lab_a.nii.gz", (rng.random((6, 6, 6)) > 0.7).astype(np.uint8))
    expected[nifti(man / "img_b.nii.gz", rng.random((6, 6, 6), dtype=np.float32))] = "missing-label"
    (man / "manifest.csv").write_text("image,label,patient\nimg_a.nii.gz,lab_a.nii.gz,MAN-0001\nimg_b.nii.gz,lab_b.nii.gz,MAN-0002\n")
    config = write_config(
        root,
        [{"path": "data", "fundus_grades_csv": str(grades)}, {"path": "manifest_source", "nifti_manifest": "manifest_source/manifest.csv"}],
        max_file_bytes=MAX_FILE_BYTES,
        follow_symlinks=True,
    )
    before = tree_hashes(root / "data") | tree_hashes(man)
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "protocols.cli", "-q", "ingest", "--config", str(config)],
            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        runs.append((proc, time.perf_counter() - t0))
    cfg = load_site_config(config)
    with Catalog.open(cfg.state.catalog, keys_dir=cfg.state.keys) as catalog:
        quarantined = {row.path: row for row in catalog.quarantined()}
        status = {catalog.secrets.decrypt_path(r.path_enc): r for r in catalog.file_rows().values()}
        patient_keys = {r[0] for r in catalog.conn.execute("SELECT key FROM patients")}
    return {
        "root": root, "data": data, "expected": expected, "before": before, "after": tree_hashes(root / "data") | tree_hashes(man),
        "runs": runs, "quarantined": quarantined, "status": status, "cfg": cfg, "patient_keys": patient_keys, "site": site,
        "phantom": phantom_consortium,
    }


def test_cli_exits_zero_and_prints_counts_per_kind(mixed) -> None:
    proc, _ = mixed["runs"][0]
    assert proc.returncode == 0, proc.stderr[-2000:]
    kinds = dict(re.findall(r"^  ([a-z0-9-]+) +(\d+)$", proc.stdout, flags=re.M))
    for kind in ("dicom-series", "dicom-seg", "dicom-op", "dicom-sc", "dicom-enhanced", "dicom-multiframe",
                 "dicom-2d", "dicom-non-image", "nifti-image", "nifti-label", "fundus-image"):
        assert int(kinds.get(kind, 0)) > 0, f"no {kind} in summary:\n{proc.stdout}"
    catalogued_files = sum(1 for r in mixed["status"].values() if r.status == "ok")
    printed = re.search(r"catalogued files by kind:\n((?:  .+\n)+)", proc.stdout).group(1)
    assert sum(int(n) for n in re.findall(r"(\d+)\n", printed)) == catalogued_files
    assert re.search(r"(\d+) labeled volumes", proc.stdout).group(1) == str(
        mixed["phantom"].site(mixed["site"]).tof_dicom_studies + mixed["phantom"].site(mixed["site"]).tof_nifti_studies + 1
    )  # every phantom TOF study plus the manifest pair


def test_every_broken_input_is_quarantined_with_its_reason(mixed) -> None:
    expected = dict(mixed["expected"])
    expected |= {mixed["data"] / "pydicom_data" / n: r for n, r in PYDICOM_DATA_QUARANTINED.items()}
    expected |= {mixed["data"] / "pydicom_examples" / n: r for n, r in PYDICOM_EXAMPLES_QUARANTINED.items()}
    got = {p: row.reason_code for p, row in mixed["quarantined"].items()}
    assert len(set(mixed["expected"].values())) >= 10
    assert got == expected
    assert all(row.detail and str(mixed["root"]) not in row.detail for row in mixed["quarantined"].values())


def test_every_good_input_is_catalogued(mixed) -> None:
    data, status, quarantined = mixed["data"], mixed["status"], mixed["quarantined"]
    good = [p for p in mixed["before"] if p not in mixed["expected"] and p not in quarantined]
    assert len(good) > 150
    not_ok = [p for p in good if p not in status or status[p].status != "ok"]
    assert not_ok == []
    assert status[data / "nibabel" / "slicethickness_empty_string.dcm"].kind == "dicom-series"
    assert status[data / "nibabel" / "anatomical.nii"].kind == "nifti-image"
    assert status[data / "pydicom_data" / "emri_small.dcm"].kind == "dicom-multiframe"
    assert status[data / "pydicom_data" / "eCT_Supplemental.dcm"].kind == "dicom-enhanced"
    # compressed transfer syntaxes decoded by pylibjpeg / Pillow / the RLE handler
    for name in ("JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "US1_J2KR.dcm", "RG1_J2KI.dcm", "OBXXXX1A_rle.dcm",
                 "color3d_jpeg_baseline.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        assert status[data / "pydicom_data" / name].status == "ok", name


def test_originals_are_byte_identical(mixed) -> None:
    assert mixed["after"] == mixed["before"]


def test_second_run_reparses_nothing_and_is_faster(mixed) -> None:
    (first, t1), (second, t2) = mixed["runs"]
    assert second.returncode == 0, second.stderr[-2000:]
    scanned = int(re.search(r"(\d+) files scanned", second.stdout).group(1))
    assert re.search(r"scanned in [\d.]+ s: 0 parsed, (\d+) unchanged", second.stdout).group(1) == str(scanned)
    assert int(re.search(r"scanned in [\d.]+ s: (\d+) parsed", first.stdout).group(1)) == scanned
    s1 = float(re.search(r"scanned in ([\d.]+) s", first.stdout).group(1))
    s2 = float(re.search(r"scanned in ([\d.]+) s", second.stdout).group(1))
    assert s2 < s1 / 4 and t2 < t1
    assert first.stdout.split("catalog:")[1] == second.stdout.split("catalog:")[1]  # same totals


def test_no_real_patient_id_in_catalog_or_cache(mixed) -> None:
    ids = set()
    for path in mixed["before"]:
        if path.suffix == ".dcm" and path not in mixed["expected"]:  # (huge.dcm is 16 MB of zeros)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["PatientID"])
                ids.add(str(ds.get("PatientID", "")))
            except Exception:
                pass
    ids |= set(mixed["phantom"].site(mixed["site"]).tof_patient_ids) | {"BRK-0005", "MAN-0001"}
    # short all-digit IDs occur by chance in binary pixel data; test the distinctive ones
    ids = {i for i in ids if len(i) >= 8 or (len(i) >= 5 and not i.isdigit())}
    assert len(ids) > 8
    state = mixed["cfg"].state.root
    blobs = [p.read_bytes() for p in state.rglob("*") if p.is_file() and "keys" not in p.parts]
    assert any(p.suffix == ".npz" for p in state.rglob("*"))
    needles = [i.encode() for i in sorted(ids | {str(mixed["data"])})]
    leaks = {n for n in needles for blob in blobs if n in blob}
    assert leaks == set()  # neither patient IDs nor source paths (they are stored encrypted)
