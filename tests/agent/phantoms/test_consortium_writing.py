"""Writing the consortium: determinism, independence of sites, overwrite rules, the CLI command."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from agent.phantoms.consortium import MANIFEST_NAME, ConsortiumSpec, ConsortiumSummary, write_consortium
from protocols.cli import main as anonfed_main
from protocols.errors import BadInputError

TINY = ConsortiumSpec(sites=1, seed=3, tof_patients=2, fundus_patients=2, volume_size=16, fundus_size=64)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_adding_sites_changes_nothing(phantom_consortium: ConsortiumSummary, tmp_path: Path) -> None:
    # The fixture has three sites; a one-site run of the same seed must reproduce hospital-a exactly.
    one_site = write_consortium(tmp_path / "one", dataclasses.replace(phantom_consortium.spec, sites=1), progress=False)
    ours, theirs = _hashes(one_site.site_dir("hospital-a")), _hashes(phantom_consortium.site_dir("hospital-a"))
    assert ours == theirs and any(k.endswith(".png") for k in ours) and any(k.endswith(".nii.gz") for k in ours)
    # Pixel arrays too (not only bytes), for each format.
    rel = next(k for k in ours if k.endswith("slice-0001.dcm"))
    a = pydicom.dcmread(one_site.site_dir("hospital-a") / rel).pixel_array
    b = pydicom.dcmread(phantom_consortium.site_dir("hospital-a") / rel).pixel_array
    assert np.array_equal(a, b)


def test_different_seed_gives_different_pixels(tmp_path: Path) -> None:
    a = write_consortium(tmp_path / "a", TINY, progress=False)
    b = write_consortium(tmp_path / "b", dataclasses.replace(TINY, seed=4), progress=False)

    def first(summary: ConsortiumSummary, pattern: str) -> Path:
        return sorted(summary.site_dir("hospital-a").rglob(pattern))[0]

    assert not np.array_equal(np.asarray(nib.load(first(a, "*_tof.nii.gz")).dataobj), np.asarray(nib.load(first(b, "*_tof.nii.gz")).dataobj))
    assert not np.array_equal(np.asarray(Image.open(first(a, "*.png"))), np.asarray(Image.open(first(b, "*.png"))))
    assert not np.array_equal(pydicom.dcmread(first(a, "slice-0008.dcm")).pixel_array, pydicom.dcmread(first(b, "slice-0008.dcm")).pixel_array)
    assert pydicom.dcmread(first(a, "slice-0008.dcm")).StudyInstanceUID != pydicom.dcmread(first(b, "slice-0008.dcm")).StudyInstanceUID


def test_rerun_with_same_spec_reuses_and_other_spec_is_refused(phantom_consortium: ConsortiumSummary) -> None:
    again = write_consortium(phantom_consortium.root, phantom_consortium.spec, progress=False)
    assert again.reused and again.sites == phantom_consortium.sites
    with pytest.raises(BadInputError, match="different spec"):
        write_consortium(phantom_consortium.root, dataclasses.replace(phantom_consortium.spec, seed=8))


def test_non_empty_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a phantom output")
    with pytest.raises(BadInputError, match="not empty"):
        write_consortium(tmp_path, TINY)
    with pytest.raises(BadInputError, match="is a file"):
        write_consortium(tmp_path / "notes.txt", TINY)


def test_damaged_previous_output_is_refused(tmp_path: Path) -> None:
    summary = write_consortium(tmp_path / "out", TINY, progress=False)
    victim = sorted(summary.site_dir("hospital-a").rglob("*.png"))[0]
    victim.unlink()
    with pytest.raises(BadInputError, match="incomplete"):
        write_consortium(tmp_path / "out", TINY)
    (tmp_path / "out" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BadInputError, match="unreadable"):
        write_consortium(tmp_path / "out", TINY)


@pytest.mark.parametrize(("field", "value"), [("sites", 0), ("volume_size", 8), ("fundus_size", 32), ("seed", -1), ("tof_patients", True)])
def test_spec_rejects_out_of_range_values(field: str, value: int) -> None:
    with pytest.raises(BadInputError, match=field):
        dataclasses.replace(TINY, **{field: value})


def test_cli_writes_and_describes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["phantoms", "--out", str(tmp_path / "cli"), "--sites", "2", "--seed", "3", "--tof-patients", "1",
            "--fundus-patients", "1", "--volume-size", "16", "--fundus-size", "64"]
    assert anonfed_main(args) == 0
    out = capsys.readouterr().out
    assert "hospital-a" in out and "hospital-b" in out and "s per TOF volume" in out
    assert (tmp_path / "cli" / "configs" / "hospital-b.yaml").is_file()
    shutil.rmtree(tmp_path / "cli" / "hospital-b")
    assert anonfed_main(args) == BadInputError.exit_code


def test_interrupted_run_is_regenerated_by_the_same_spec_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.phantoms.consortium as consortium

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(consortium, "write_site", crash)
        with pytest.raises(KeyboardInterrupt):
            write_consortium(out, TINY, progress=False)
    assert (out / MANIFEST_NAME).is_file()
    with pytest.raises(BadInputError, match="different spec"):
        write_consortium(out, dataclasses.replace(TINY, seed=9))
    summary = write_consortium(out, TINY, progress=False)
    assert not summary.reused and summary.config_path("hospital-a").is_file()
    assert write_consortium(out, TINY, progress=False).reused
