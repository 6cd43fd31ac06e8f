"""Fundus images as training tensors: resized, scaled to [-1, 1], with a patient index per image."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from agent.records import FundusImage
from protocols.errors import BadInputError


def fundus_to_tensors(images: Sequence[FundusImage], *, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack fundus photographs into (N, 3, R, R) float32 in [-1, 1] and a (N,) patient index.

    Patient keys are mapped to integers 0..P-1 in order of first appearance; the keys themselves
    stay out of the tensors (and out of logs).

    Raises
    ------
    BadInputError
        If no image is given.
    """
    if not images:
        raise BadInputError("no fundus images to train on: ingest a source with fundus photographs first")
    tensors, patients, index = [], [], {}
    for im in images:
        x = torch.from_numpy(np.ascontiguousarray(im.rgb)).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0
        if x.shape[-2:] != (resolution, resolution):
            # Area-weighted downsampling (antialias) keeps fine vessels from aliasing.
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        tensors.append(x.clamp(-1.0, 1.0))
        patients.append(index.setdefault(im.patient_key, len(index)))
    return torch.cat(tensors), torch.tensor(patients, dtype=torch.long)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, as FundusImage stores pixels."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
