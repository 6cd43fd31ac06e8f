"""`anonfed export-dicom` from the NPZ that `anonfed train` writes, with its JSON sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.export.validation import have_dciodvfy
from protocols.cli import main


def test_tof_npz_with_sidecar_to_validated_dicom(tmp_path: Path, generator_pairs: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    npz = tmp_path / "samples_eps-7.4.npz"
    np.savez(npz, images=generator_pairs[:, 0], labels=(generator_pairs[:, 1] > 0).astype(np.uint8))
    npz.with_suffix(".json").write_text(json.dumps({"privacy": {"epsilon": 7.4, "delta": 1e-5, "unit": "patient"}, "run_id": "r9"}))
    argv = ["export-dicom", "tof", "--npz", str(npz), "--out", str(tmp_path / "dicom"), "--site-id", "hospital-a"]
    if have_dciodvfy():
        argv.append("--validate")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"wrote {2 * len(generator_pairs)} synthetic DICOM file(s)" in out
    assert "(epsilon=7.40, delta=1e-05)-DP per patient" in out
    sc = pydicom.dcmread(tmp_path / "dicom" / "tof-00001-image.dcm", stop_before_pixels=True)
    assert "run r9" in sc.DerivationDescription


def test_non_dp_samples_are_labelled_without_guarantee(tmp_path: Path, averaged_fundus: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    npz = tmp_path / "fundus.npz"
    np.savez(npz, images=averaged_fundus)
    argv = ["export-dicom", "fundus", "--npz", str(npz), "--out", str(tmp_path / "op"), "--site-id", "hospital-a", "--method", "stylegan-local"]
    assert main(argv) == 0
    assert "NO formal privacy guarantee" in capsys.readouterr().out


def test_push_without_config_is_refused(tmp_path: Path, averaged_fundus: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    npz = tmp_path / "fundus.npz"
    np.savez(npz, images=averaged_fundus)
    argv = ["export-dicom", "fundus", "--npz", str(npz), "--out", str(tmp_path / "op"), "--site-id", "hospital-a", "--push"]
    assert main(argv) == 2
    assert "--push: needs --config" in capsys.readouterr().err
