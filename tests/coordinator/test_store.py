"""The synthetic store: verified on arrival, content-addressed, deduplicated, exportable, tamper-evident."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from coordinator.store import SyntheticStore
from coordinator.store.export import export_dataset
from protocols.errors import BadInputError, IntegrityError
from protocols.messages import array_sha256


def _samples(seed: int, n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, (n, 2, 8, 8)).astype(np.float32)
    s[:, 1] = s[:, 1] > 0
    return s


def _add(store, s, site="hospital-a", rnd=1, sha=None):
    return store.add(s, claimed_sha256=sha or array_sha256(s), run_id="run-1", site=site, round=rnd,
                     method="dpgan-wgan-gp", guarantee="(1, 1e-05)-DP, unit patient", epsilon=1.0, delta=1e-5,
                     unit="patient")


def test_outputs_are_content_addressed_and_deduplicated(tmp_path) -> None:
    with SyntheticStore(tmp_path / "store") as store:
        s = _samples(0)
        row, new = _add(store, s)
        assert new and store.blob_path(row.sha256).is_file()
        np.testing.assert_array_equal(store.load(row.sha256), s)
        _, new_again = _add(store, s)  # same bytes, same provenance: nothing new
        assert not new_again and len(store.entries()) == 1
        _, new_site = _add(store, s.copy(), site="hospital-b")  # same bytes from another site: indexed, stored once
        assert not new_site and len(store.entries()) == 2
        assert len(list((tmp_path / "store" / "blobs").rglob("*.npy"))) == 1
        assert [e.site for e in store.entries(site="hospital-b")] == ["hospital-b"]


def test_an_output_whose_claim_the_ledger_rejects_is_not_kept(tmp_path) -> None:
    """The release's claim is recorded after verification and before anything is written."""
    s = _samples(0)
    calls = []

    def ledger_refuses() -> None:
        calls.append("claim")
        raise IntegrityError("the ledger refused the claim")

    with SyntheticStore(tmp_path / "store") as store:
        with pytest.raises(IntegrityError, match="ledger refused"):
            store.add(s, claimed_sha256=array_sha256(s), run_id="run-1", site="hospital-a", round=1,
                      method="dpgan-wgan-gp", guarantee="g", record=ledger_refuses)
        assert calls == ["claim"] and store.entries() == [] and not store.blob_path(array_sha256(s)).exists()
        with pytest.raises(IntegrityError, match="does not match"):  # a bad output never reaches the ledger
            store.add(s, claimed_sha256="0" * 64, run_id="run-1", site="hospital-a", round=1, method="m",
                      guarantee="g", record=ledger_refuses)
        assert calls == ["claim"]


def test_mismatched_hash_is_rejected_on_arrival(tmp_path) -> None:
    with SyntheticStore(tmp_path) as store:
        with pytest.raises(IntegrityError, match="does not match the claimed"):
            _add(store, _samples(0), sha=array_sha256(_samples(1)))
        assert store.entries() == []
        with pytest.raises(BadInputError, match=r"\(n, 2, S, S\) float32"):
            _add(store, _samples(0).astype(np.float64))


def test_modified_blob_is_detected(tmp_path) -> None:
    with SyntheticStore(tmp_path) as store:
        row, _ = _add(store, _samples(0))
        path = store.blob_path(row.sha256)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
        assert store.verify() and "modified on disk" in store.verify()[0]
        with pytest.raises(IntegrityError, match="modified on disk"):
            store.load(row.sha256)


def test_export_writes_a_dataset_folder(tmp_path) -> None:
    with SyntheticStore(tmp_path / "store") as store:
        _add(store, _samples(0))
        _add(store, _samples(1), site="hospital-b", rnd=2)
        manifest = export_dataset(store, tmp_path / "export")
    rows = list(csv.DictReader(open(manifest, encoding="utf-8")))
    assert {r["site"] for r in rows} == {"hospital-a", "hospital-b"}
    for r in rows:
        folder = tmp_path / "export" / r["folder"]
        pairs = np.load(folder / "pairs.npz")
        assert pairs["image"].shape == (4, 8, 8) and set(np.unique(pairs["label"])) <= {0, 1}
        assert len(list((folder / "png").glob("*_image.png"))) == 4
    assert "SYNTHETIC" in (tmp_path / "export" / "README.txt").read_text()
