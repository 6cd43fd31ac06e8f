"""Synthetic inputs for the DICOM export tests: real DP-GAN generator output and k-averaged fundus."""

from __future__ import annotations

import numpy as np
import pytest

from agent.export.synthetic_marking import SyntheticProvenance
from protocols.tasks import Task


@pytest.fixture(scope="session")
def generator_pairs() -> np.ndarray:
    """(4, 2, 32, 32) pairs from the project's WGAN-GP generator (initial weights): image in [-1, 1]."""
    import torch

    from agent.models.architectures import GanSpec
    from agent.models.weights import build_generator

    torch.manual_seed(0)
    generator = build_generator(GanSpec("wgan-gp", 32)).eval()
    with torch.no_grad():
        z = generator.sample_latents(4, torch.Generator().manual_seed(1))
        raw = generator(z).numpy()  # label channel still in tanh range (-1, 1)
    return np.ascontiguousarray(raw, dtype=np.float32)


@pytest.fixture(scope="session")
def averaged_fundus(tiny_fundus) -> np.ndarray:  # noqa: ANN001 - fixture from tests/conftest.py
    """Group averages from the project's k-anonymous clustering (k=3 patients) and k-Same-Pixel:
    (groups, H, W, 3) uint8, as a k-SALSA release hands them to the DICOM writer."""
    from agent.ksalsa.baselines import k_same_pixel, to_tensor, to_uint8
    from agent.ksalsa.clustering import cluster_by_patient

    images = to_tensor([f.rgb for f in tiny_fundus])
    keys = [f.patient_key for f in tiny_fundus]
    codes = images[:, :, ::8, ::8].reshape(len(keys), -1).numpy()  # coarse pixels stand in for W+ codes
    clustering = cluster_by_patient(codes, keys, k=3)
    return to_uint8(k_same_pixel(images, clustering, keys))


@pytest.fixture()
def dp_provenance() -> SyntheticProvenance:
    return SyntheticProvenance(
        Task.DPGAN, "hospital-a", model_sha256="0f" * 32, run_id="run-7", round=3, epsilon=7.4, delta=1e-5, privacy_unit="patient"
    )


@pytest.fixture()
def ksalsa_provenance() -> SyntheticProvenance:
    return SyntheticProvenance(Task.KSALSA, "hospital-a", model_sha256="a1" * 32, k=3)
