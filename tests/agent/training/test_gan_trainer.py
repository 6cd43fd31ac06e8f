"""GanTrainer initialisation options (the label-channel bias)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.models import GanSpec
from agent.models.weights import sample_from_generator
from agent.training.gan_trainer import LABEL_CHANNEL, GanTrainer, Hyperparameters
from protocols.errors import BadInputError

SPEC = GanSpec("wgan-gp", 32, width=8)


def _trainer(patchset, **hp) -> GanTrainer:
    return GanTrainer(SPEC, patchset.images, patchset.patient_index, hp=Hyperparameters(batch_size=8, **hp), dp=None, seed=0)


def test_a_negative_label_bias_starts_the_generator_at_background(patchset) -> None:
    default = _trainer(patchset)
    biased = _trainer(patchset, generator_label_bias=-3.0)
    assert float(biased.generator.to_patch.bias.detach()[LABEL_CHANNEL]) == -3.0
    # only the label channel's bias changes; every other weight is the seed's default init
    for (name, a), (_, b) in zip(default.generator.named_parameters(), biased.generator.named_parameters()):
        if name != "to_patch.bias":
            assert np.array_equal(a.detach().numpy(), b.detach().numpy()), name
    assert float(default.generator.to_patch.bias.detach()[0]) == float(biased.generator.to_patch.bias.detach()[0])
    assert sample_from_generator(biased.generator, n=64, seed=1)[:, 1].mean() < 0.01
    assert sample_from_generator(default.generator, n=64, seed=1)[:, 1].mean() > 0.1


def test_the_label_bias_does_not_override_given_weights(patchset) -> None:
    weights = _trainer(patchset).weights()
    resumed = GanTrainer(SPEC, patchset.images, patchset.patient_index,
                         hp=Hyperparameters(batch_size=8, generator_label_bias=-3.0), dp=None, seed=0, weights=weights)
    assert float(resumed.generator.to_patch.bias.detach()[LABEL_CHANNEL]) == pytest.approx(
        float(weights["generator.to_patch.bias"][LABEL_CHANNEL]))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_label_bias_is_refused(bad: float) -> None:
    with pytest.raises(BadInputError):
        Hyperparameters(generator_label_bias=bad)
