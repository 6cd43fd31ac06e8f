"""The Secondary Capture image every synthetic 2-D export starts from (TOF patches, fundus photographs)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from agent.export.synthetic_marking import (
    MANUFACTURER,
    SyntheticIdentity,
    SyntheticProvenance,
    mark_synthetic,
    set_patient_and_study,
)


def synthetic_sc_image(
    pixels: np.ndarray,
    *,
    photometric: str,
    bits_allocated: int,
    orientation: tuple[str, str],
    modality: str,
    description: str,
    number: int,
    series_uid: str,
    identity: SyntheticIdentity,
    provenance: SyntheticProvenance,
) -> Dataset:
    """A Secondary Capture image of ``pixels``: synthetic patient, study and derivation, and every
    synthetic/de-identification marker (:func:`agent.export.synthetic_marking.mark_synthetic`), so
    no caller can write one unmarked. The caller adds only what is specific to its images
    (laterality, windowing).
    """
    ds = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=bits_allocated,
        coordinate_system="PATIENT",
        study_instance_uid=identity.study_uid,
        series_instance_uid=series_uid,
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        manufacturer=MANUFACTURER,
        patient_id=identity.patient_id,
        patient_orientation=orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    set_patient_and_study(ds, identity)
    ds.Modality = modality
    ds.ConversionType = "SYN"  # highdicom writes WSD (workstation); these are synthetic
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = provenance.derivation_description()
    ds.SeriesDescription = f"{provenance.short_label()} {description}"[:64]
    ds.ContentDate, ds.ContentTime = identity.study_date, identity.study_time
    mark_synthetic(ds, provenance)
    return ds
