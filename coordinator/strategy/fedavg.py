"""FedAvg over named float32 weights, weighted by each site's number of patients.

Only weights are averaged. Privacy figures are per site and never pass through here (an average of
epsilons has no meaning: the consortium figure is the per-site maximum, parallel composition).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from protocols.errors import BadInputError


def fedavg(updates: Sequence[tuple[Mapping[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Weighted mean of ``(weights, num_patients)`` pairs, in float64, returned as float32.

    Raises
    ------
    BadInputError
        If there is no update, a weight is not positive, or the updates differ in names or shapes.
    """
    if not updates:
        raise BadInputError("fedavg needs at least one update; no site returned weights this round")
    names = set(updates[0][0])
    shapes = {k: np.shape(v) for k, v in updates[0][0].items()}
    total = 0
    for i, (weights, n) in enumerate(updates):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise BadInputError(f"update {i}: number of patients must be a positive integer, got {n!r}")
        if set(weights) != names:
            diff = sorted(names.symmetric_difference(weights))
            raise BadInputError(f"update {i}: weight names differ from update 0 (e.g. {diff[:2]})")
        for k, v in weights.items():
            if np.shape(v) != shapes[k]:
                raise BadInputError(f"update {i}: weight {k!r} has shape {np.shape(v)}, update 0 has {shapes[k]}")
        total += int(n)
    out: dict[str, np.ndarray] = {}
    for k in sorted(names):
        acc = np.zeros(shapes[k], dtype=np.float64)
        for weights, n in updates:
            acc += np.asarray(weights[k], dtype=np.float64) * (int(n) / total)
        out[k] = acc.astype(np.float32)
    return out
