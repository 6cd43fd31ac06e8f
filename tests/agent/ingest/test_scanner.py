"""The walk: loops, links, limits, hidden files, special files, and format sniffing."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel
import pydicom.data
import pytest

from agent.config import FolderSource, IngestSettings
from agent.ingest.quarantine import Reason, scrub
from agent.ingest.scanner import FileFormat, scan_sources, sniff_format, unknown_reason


def _scan(root: Path, **settings):
    return scan_sources([FolderSource(root)], IngestSettings(**settings))


def _reasons(result) -> dict[str, Reason]:
    return {p.path.name: p.reason for p in result.problems}


def test_symlink_cycle_is_a_directory_loop_and_the_walk_finishes(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.dcm").write_bytes(b"x" * 10)
    os.symlink("../..", tmp_path / "a" / "b" / "up")
    result = _scan(tmp_path, follow_symlinks=True)
    assert _reasons(result) == {"up": Reason.DIRECTORY_LOOP}
    assert [f.path.name for f in result.files] == ["x.dcm"]


def test_symlinks_are_skipped_when_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.dcm").write_bytes(b"x" * 10)
    os.symlink(tmp_path / "real", tmp_path / "alias")
    os.symlink("..", tmp_path / "real" / "up")
    result = _scan(tmp_path, follow_symlinks=False)
    assert result.problems == [] and result.skipped_symlinks == 2
    assert [f.path.name for f in result.files] == ["x.dcm"]


def test_a_folder_reached_twice_is_listed_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.dcm").write_bytes(b"x" * 10)
    os.symlink(tmp_path / "real", tmp_path / "alias")
    result = _scan(tmp_path)
    assert len(result.files) == 1 and result.skipped_revisits == 1


def test_limits_and_special_entries(tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").touch()
    (tmp_path / "big.dcm").write_bytes(b"x" * 101)
    (tmp_path / "ok.dcm").write_bytes(b"x" * 100)
    (tmp_path / ".hidden.dcm").write_bytes(b"x" * 10)
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    result = _scan(tmp_path, max_file_bytes=100)
    assert _reasons(result) == {
        "empty.dcm": Reason.EMPTY_FILE,
        "big.dcm": Reason.FILE_TOO_LARGE,
        "pipe": Reason.UNKNOWN_FORMAT,
        "dangling": Reason.UNREADABLE,
    }
    assert [f.path.name for f in result.files] == ["ok.dcm"] and result.skipped_hidden == 1


def test_permission_denied_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.dcm").write_bytes(b"x" * 10)
    if os.geteuid() == 0:  # root reads everything: simulate the refusal
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).name == "secret.dcm" else real(p, mode))
    else:
        os.chmod(tmp_path / "secret.dcm", 0)
    assert _reasons(_scan(tmp_path)) == {"secret.dcm": Reason.UNREADABLE}


def test_state_folder_inside_a_source_is_not_scanned(tmp_path: Path) -> None:
    (tmp_path / "state" / "cache").mkdir(parents=True)
    (tmp_path / "state" / "cache" / "x.npz").write_bytes(b"x" * 10)
    result = scan_sources([FolderSource(tmp_path)], IngestSettings(), exclude=tmp_path / "state")
    assert result.files == []


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        (pydicom.data.get_testdata_file("CT_small.dcm", download=False), FileFormat.DICOM),
        (pydicom.data.get_testdata_file("ExplVR_LitEndNoMeta.dcm", download=False), FileFormat.DICOM),
        (pydicom.data.get_testdata_file("ExplVR_BigEndNoMeta.dcm", download=False), FileFormat.DICOM),
        (Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii", FileFormat.NIFTI),
        (Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz", FileFormat.NIFTI),
    ],
)
def test_sniffing_reads_content_not_names(path, fmt) -> None:
    head = Path(path).read_bytes()[:512]
    assert sniff_format(head, "renamed.bin") is fmt


def test_unknown_content_reason_depends_on_the_name() -> None:
    assert sniff_format(b"hello world" * 50, "x.dcm") is FileFormat.UNKNOWN
    assert unknown_reason("scan.DCM") is Reason.NOT_DICOM
    assert unknown_reason("notes.txt") is Reason.UNKNOWN_FORMAT


def test_scrub_removes_paths_and_file_names() -> None:
    path = Path("/data/MRN123456/MRN123456_head.nii.gz")
    text = scrub(f"Cannot read {path}: file MRN123456_head.nii.gz is short; see /etc/x", path)
    assert "MRN123456" not in text and "/etc" not in text
