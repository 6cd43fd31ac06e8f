"""Weights as plain float32 numpy arrays: the only form in which a model crosses the site boundary.

Keys are ``generator.<name>`` and ``critic.<name>`` (the modules' state-dict names). No pickles:
the coordinator initialises weights with :func:`initial_weights` and sites load them back with
:func:`load_weights`, which checks every key and shape.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agent.models.architectures import Architecture, GanSpec, parse_architecture
from agent.models.critics import ConvCritic
from agent.models.generators import ConvGenerator
from protocols.errors import BadInputError

GENERATOR_PREFIX = "generator."
CRITIC_PREFIX = "critic."
SAMPLE_BATCH = 64  # generator batch for sampling (batch-stat normalisation needs > 1 sample)


def build_generator(spec: GanSpec) -> ConvGenerator:
    """A freshly initialised generator for ``spec`` (uses the global torch RNG; seed it outside)."""
    return ConvGenerator(
        patch_size=spec.patch_size, latent_dim=spec.latent_dim, width=spec.width, spectral_norm=spec.generator_spectral_norm
    )


def build_critic(spec: GanSpec) -> ConvCritic:
    """A freshly initialised critic for ``spec``; SN on for ``wgan-gp-sn`` only."""
    return ConvCritic(patch_size=spec.patch_size, width=spec.effective_critic_width, spectral_norm=spec.architecture.critic_spectral_norm)


def build_pair(spec: GanSpec, *, seed: int) -> tuple[ConvGenerator, ConvCritic]:
    """Generator and critic initialised deterministically from ``seed`` without touching global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_generator(spec), build_critic(spec)


def module_to_arrays(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """State dict of ``module`` as float32 arrays under ``prefix``."""
    return {prefix + k: v.detach().cpu().to(torch.float32).numpy().copy() for k, v in module.state_dict().items()}


def load_arrays(module: nn.Module, weights: dict[str, np.ndarray], prefix: str) -> None:
    """Load ``prefix``-ed arrays into ``module``, requiring exactly its keys and shapes.

    Raises
    ------
    BadInputError
        If a key is missing or unexpected, or a shape differs (wrong architecture or patch size).
    """
    own = module.state_dict()
    given = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(given))
    extra = sorted(set(given) - set(own))
    if missing or extra:
        raise BadInputError(
            f"weights do not fit this {type(module).__name__}: missing {missing[:3]}, unexpected {extra[:3]}; "
            "check that architecture and patch_size match the ones the weights were made with"
        )
    tensors = {}
    for k, ref in own.items():
        arr = np.asarray(given[k])
        if tuple(arr.shape) != tuple(ref.shape):
            raise BadInputError(
                f"weight {prefix}{k}: expected shape {tuple(ref.shape)}, got {tuple(arr.shape)}; check that "
                "architecture and patch_size match the ones the weights were made with"
            )
        if not np.all(np.isfinite(arr)):
            raise BadInputError(f"weight {prefix}{k} contains NaN or infinity; refusing to load it")
        tensors[k] = torch.as_tensor(arr, dtype=ref.dtype)
    module.load_state_dict(tensors)


def pair_to_arrays(generator: nn.Module, critic: nn.Module) -> dict[str, np.ndarray]:
    """Both networks as one flat dict with ``generator.``/``critic.`` keys."""
    return {**module_to_arrays(generator, GENERATOR_PREFIX), **module_to_arrays(critic, CRITIC_PREFIX)}


def initial_weights(architecture: str | Architecture, patch_size: int, seed: int) -> dict[str, np.ndarray]:
    """Initial generator + critic weights (float32 arrays), identical for identical arguments.

    Raises
    ------
    BadInputError
        If the architecture or patch size is not supported.
    """
    spec = GanSpec(parse_architecture(architecture), patch_size)
    generator, critic = build_pair(spec, seed=seed)
    return pair_to_arrays(generator, critic)


def threshold_label(pairs: np.ndarray) -> np.ndarray:
    """Channel 1 (label, tanh output) -> {0, 1} at 0; channel 0 (image) stays in [-1, 1]."""
    out = pairs.astype(np.float32, copy=True)
    out[:, 1] = (out[:, 1] > 0).astype(np.float32)
    return out


@torch.no_grad()
def sample_from_generator(generator: ConvGenerator, *, n: int, seed: int, device: torch.device | None = None) -> np.ndarray:
    """``n`` synthetic pairs ``(n, 2, S, S)`` float32 with the label thresholded, reproducible from ``seed``."""
    if n < 0:
        raise BadInputError(f"n: expected a number of samples >= 0, got {n}")
    rng = torch.Generator(device=device or "cpu").manual_seed(seed)
    was_training = generator.training
    generator.eval()
    chunks = []
    done = 0
    while done < n:
        # Always run full batches (batch-stat normalisation); drop the surplus.
        z = generator.sample_latents(SAMPLE_BATCH, rng, device=device)
        chunks.append(generator(z)[: n - done].float().cpu().numpy())
        done += chunks[-1].shape[0]
    generator.train(was_training)
    s = generator.patch_size
    raw = np.concatenate(chunks) if chunks else np.zeros((0, 2, s, s), np.float32)
    return threshold_label(raw)


def sample_pairs(
    weights: dict[str, np.ndarray], *, architecture: str | Architecture, patch_size: int, n: int, seed: int
) -> np.ndarray:
    """Sample ``n`` image+label pairs ``(n, 2, S, S)`` from released weights (label in {0, 1}).

    Raises
    ------
    BadInputError
        If the weights do not fit the architecture/patch size, or ``n`` is negative.
    """
    spec = GanSpec(parse_architecture(architecture), patch_size)
    generator = build_generator(spec)
    load_arrays(generator, weights, GENERATOR_PREFIX)
    return sample_from_generator(generator, n=n, seed=seed)
