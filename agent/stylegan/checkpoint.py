"""StyleGAN checkpoints: tensors and plain values only, loaded with ``weights_only=True``.

A checkpoint never contains pickled code, so loading one cannot run anything. Its ``metadata``
carries the training mode and the ``release_policy`` marker that the egress guard reads: a
``site-only`` model (trained without DP) must never leave the site.

Layout::

    {"format": FORMAT, "metadata": {"training_mode", "release_policy", "step", ...},
     "arch": StyleGANConfig as dict, "train": TrainingConfig as dict,
     "state": {"generator": ..., "generator_ema": ..., "discriminator": ...,
               "g_optimizer": ..., "d_optimizer": ..., "augment": ..., "rng": ByteTensor}}
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agent.stylegan.config import ReleasePolicy
from protocols.atomic_files import atomic_write
from protocols.errors import BadInputError, EgressBlockedError

if TYPE_CHECKING:
    from agent.stylegan.generator import Generator

FORMAT = "anonfed-stylegan-checkpoint/1"
RELEASE_POLICY_KEY = "release_policy"


def save_checkpoint(path: Path, payload: dict[str, Any], *, fmt: str = FORMAT) -> None:
    """Write ``payload`` tagged with ``fmt`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_write(Path(path)) as fh:
        torch.save({"format": fmt, **payload}, fh)


def load_checkpoint(path: Path, *, fmt: str = FORMAT) -> dict[str, Any]:
    """Read a checkpoint tagged ``fmt``, refusing anything that is not plain data.

    Raises
    ------
    BadInputError
        If the file cannot be read, holds pickled objects other than tensors and plain values, or
        is not a StyleGAN checkpoint.
    """
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        # weights_only=True refuses any pickled class or function with an UnpicklingError.
        raise BadInputError(f"cannot load checkpoint {Path(path).name}: only tensors and plain values "
                            f"are accepted ({type(exc).__name__}); re-export it with save_checkpoint") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise BadInputError(f"{Path(path).name} is not the expected checkpoint: expected format {fmt!r}, "
                            f"found {found!r}")
    return payload


def generator_arrays_for_release(payload: dict[str, Any]) -> dict[str, np.ndarray]:
    """The EMA generator's weights as float32 arrays, only if the checkpoint may leave the site.

    This is the model's own check; the egress guard checks the same marker independently.

    Raises
    ------
    EgressBlockedError
        If the checkpoint's release policy is not ``dp-releasable`` (e.g. a ``local`` model).
    """
    policy = payload.get("metadata", {}).get(RELEASE_POLICY_KEY)
    if policy != ReleasePolicy.DP_RELEASABLE.value:
        raise EgressBlockedError(
            f"StyleGAN weights with release_policy={policy!r} may not leave the site: only models trained "
            f"with mode federated-dp ({ReleasePolicy.DP_RELEASABLE.value!r}) are releasable; release synthetic "
            f"images sampled at the site instead"
        )
    state = payload["state"]["generator_ema"]
    return {f"generator.{k}": v.detach().cpu().to(torch.float32).numpy().copy() for k, v in state.items()}


def generator_from_checkpoint(payload: dict[str, Any], *, ema: bool = True) -> "Generator":
    """Rebuild the (EMA) generator of a checkpoint, frozen and in eval mode (for sampling, inversion)."""
    from agent.stylegan.config import StyleGANConfig
    from agent.stylegan.generator import Generator

    arch = StyleGANConfig(**payload["arch"])
    G = Generator(arch)
    G.load_state_dict(payload["state"]["generator_ema" if ema else "generator"])
    return G.eval().requires_grad_(False)
