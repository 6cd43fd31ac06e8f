"""Generators/critics: shapes, no BatchNorm in critics, deterministic weights, sampling, isolation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from agent.models import Architecture, GanSpec, build_pair, initial_weights, sample_pairs
from agent.models.weights import load_arrays, CRITIC_PREFIX
from protocols.errors import BadInputError


@pytest.mark.parametrize("arch", [a.value for a in Architecture])
@pytest.mark.parametrize("size", [32, 64, 96])
def test_shapes_for_every_family_and_patch_size(arch: str, size: int) -> None:
    gen, critic = build_pair(GanSpec(arch, size, width=8), seed=0)
    x = gen(torch.randn(3, gen.latent_dim))
    assert x.shape == (3, 2, size, size) and float(x.detach().abs().max()) <= 1
    assert critic(x).shape == (3,)


@pytest.mark.parametrize("arch", [a.value for a in Architecture])
def test_critics_have_no_layer_that_mixes_samples(arch: str) -> None:
    _, critic = build_pair(GanSpec(arch, 32), seed=0)
    mixing = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.InstanceNorm2d)
    assert not [m for m in critic.modules() if isinstance(m, mixing)]
    assert critic.spectral_norm == (arch == "wgan-gp-sn")


def test_initial_weights_are_deterministic_float32_and_prefixed() -> None:
    a = initial_weights("wgan-gp-sn", 32, seed=4)
    b = initial_weights("wgan-gp-sn", 32, seed=4)
    c = initial_weights("wgan-gp-sn", 32, seed=5)
    assert a.keys() == b.keys()
    assert all(k.startswith(("generator.", "critic.")) for k in a)
    assert all(v.dtype == np.float32 and np.array_equal(v, b[k]) for k, v in a.items())
    assert not np.array_equal(a["generator.stem.weight"], c["generator.stem.weight"])


def test_initial_weights_do_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    initial_weights("dcgan", 32, seed=0)
    assert torch.equal(torch.rand(1), expected)


def test_sampled_pairs_have_a_binary_label_and_are_reproducible() -> None:
    w = initial_weights("wgan-gp", 32, seed=1)
    x = sample_pairs(w, architecture="wgan-gp", patch_size=32, n=70, seed=9)
    assert x.shape == (70, 2, 32, 32) and x.dtype == np.float32
    assert set(np.unique(x[:, 1]).tolist()) <= {0.0, 1.0}
    assert x[:, 0].min() >= -1 and x[:, 0].max() <= 1
    assert np.array_equal(x, sample_pairs(w, architecture="wgan-gp", patch_size=32, n=70, seed=9))
    assert sample_pairs(w, architecture="wgan-gp", patch_size=32, n=0, seed=9).shape == (0, 2, 32, 32)


def test_weights_of_another_patch_size_are_refused() -> None:
    w = initial_weights("wgan-gp", 96, seed=1)
    with pytest.raises(BadInputError, match="expected shape .* patch_size"):
        sample_pairs(w, architecture="wgan-gp", patch_size=64, n=1, seed=0)
    with pytest.raises(BadInputError, match="missing .* patch_size"):
        sample_pairs(w, architecture="wgan-gp", patch_size=32, n=1, seed=0)


def test_weights_of_another_family_are_refused() -> None:
    w = initial_weights("wgan-gp", 32, seed=1)
    _, critic = build_pair(GanSpec("wgan-gp-sn", 32), seed=0)
    with pytest.raises(BadInputError, match="missing"):
        load_arrays(critic, w, CRITIC_PREFIX)


def test_non_finite_weights_are_refused() -> None:
    w = initial_weights("dcgan", 32, seed=1)
    w["generator.stem.bias"][0] = np.nan
    with pytest.raises(BadInputError, match="NaN"):
        sample_pairs(w, architecture="dcgan", patch_size=32, n=1, seed=0)


def test_unknown_family_and_size_are_refused() -> None:
    with pytest.raises(BadInputError, match="architecture"):
        initial_weights("stylegan", 32, seed=0)
    with pytest.raises(BadInputError, match="patch_size"):
        initial_weights("dcgan", 48, seed=0)


def test_agent_models_imports_no_other_agent_package() -> None:
    code = "import sys, agent.models; print(sorted(m for m in sys.modules if m.startswith('agent.') and not m.startswith('agent.models')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
