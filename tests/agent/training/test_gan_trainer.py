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


# -- generator EMA (Polyak averaging) ---------------------------------------------------------------
def _params(module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in module.parameters()]


def test_the_generator_ema_is_the_hand_computed_average_of_the_generator_steps(patchset) -> None:
    decay = 0.9
    trainer = _trainer(patchset, n_critic=1, generator_ema=decay)
    expected = _params(trainer.generator)  # the EMA starts at the initial generator
    assert all(np.array_equal(a, b) for a, b in zip(expected, _params(trainer.generator_ema)))
    for t in range(4):
        trainer.train_iteration()  # n_critic 1: one critic and one generator step
        d = min(decay, (1 + t) / (10 + t))  # warm-up: 0.1, 2/11, 3/12, 4/13 (all below 0.9)
        expected = [d * e + (1 - d) * g for e, g in zip(expected, _params(trainer.generator))]
    assert trainer.ema_updates == trainer.generator_steps == 4
    for e, got in zip(expected, _params(trainer.generator_ema)):
        np.testing.assert_allclose(got, e, rtol=1e-5, atol=1e-6)
    # the EMA differs from the raw generator, is what is sampled, and weights() stay the raw generator
    assert trainer.sampling_generator is trainer.generator_ema
    assert not all(np.array_equal(a, b) for a, b in zip(_params(trainer.generator), _params(trainer.generator_ema)))
    raw = trainer.weights()
    for name, p in trainer.generator.named_parameters():
        assert np.array_equal(raw["generator." + name], p.detach().numpy())


def test_without_ema_nothing_changes(patchset) -> None:
    plain = _trainer(patchset)
    assert plain.generator_ema is None and plain.sampling_generator is plain.generator
    assert "generator_ema" not in plain.state_dict()


def test_a_resumed_trainer_continues_the_ema_exactly(patchset, tmp_path) -> None:
    from agent.training.checkpoints import load_checkpoint, save_checkpoint

    first = _trainer(patchset, n_critic=1, generator_ema=0.99)
    for _ in range(3):
        first.train_iteration()
    save_checkpoint(tmp_path / "ckpt.pt", first.state_dict())
    resumed = _trainer(patchset, n_critic=1, generator_ema=0.99)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt"))
    assert resumed.ema_updates == first.ema_updates == 3
    for a, b in zip(_params(first.generator_ema), _params(resumed.generator_ema)):
        assert np.array_equal(a, b)
    for _ in range(2):  # non-DP training is deterministic from the seed: both continue identically
        first.train_iteration()
        resumed.train_iteration()
    for a, b in zip(_params(first.generator_ema), _params(resumed.generator_ema)):
        assert np.array_equal(a, b)


def test_a_checkpoint_and_trainer_that_disagree_on_the_ema_are_refused(patchset) -> None:
    with_ema = _trainer(patchset, generator_ema=0.99)
    without = _trainer(patchset)
    with pytest.raises(BadInputError):
        without.load_state_dict(with_ema.state_dict())
    with pytest.raises(BadInputError):
        with_ema.load_state_dict(without.state_dict())


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5, math.nan, math.inf])
def test_an_ema_decay_outside_0_1_is_refused(bad: float) -> None:
    with pytest.raises(BadInputError, match="generator_ema"):
        Hyperparameters(generator_ema=bad)


# -- learning-rate decay ----------------------------------------------------------------------------
def test_the_lr_schedule_values() -> None:
    from agent.training.gan_trainer import lr_factor

    # constant for the first half of 10 steps, then linear (10 - s) / 5 and cosine down to 0
    assert [lr_factor("linear", 0.5, s, 10) for s in range(11)] == pytest.approx(
        [1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0.0])
    cos = [lr_factor("cosine", 0.5, s, 10) for s in range(5, 10)]
    assert cos == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)])
    assert cos[0] == 1.0 and all(a > b > 0 for a, b in zip(cos, cos[1:]))
    assert lr_factor("linear", 0.0, 0, 4) == 1.0 and lr_factor("linear", 0.0, 3, 4) == pytest.approx(0.25)
    assert lr_factor("cosine", 0.5, 12, 10) == 0.0  # past the plan: no further movement
    assert lr_factor(None, 0.5, 9, 10) == 1.0


def test_the_trainer_applies_the_schedule_to_both_optimisers(patchset) -> None:
    trainer = GanTrainer(SPEC, patchset.images, patchset.patient_index, dp=None, seed=0, total_steps=8,
                         hp=Hyperparameters(batch_size=8, n_critic=2, critic_lr=1e-3, generator_lr=2e-3,
                                            lr_decay="linear", lr_decay_start=0.5))
    critic_lrs, generator_lrs = [], []
    for _ in range(8):
        trainer.train_iteration()
        critic_lrs.append(trainer.c_opt.param_groups[0]["lr"])
        generator_lrs.append(trainer.g_opt.param_groups[0]["lr"])
    # critic step s uses factor(s); the generator step after critic step s shares factor(s)
    assert critic_lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    assert generator_lrs[1::2] == pytest.approx([2e-3, 2e-3, 1.5e-3, 0.5e-3])


def test_a_resumed_run_gets_the_same_lr_and_weights_as_an_uninterrupted_one(patchset, tmp_path) -> None:
    from agent.training.checkpoints import load_checkpoint, save_checkpoint

    hp = Hyperparameters(batch_size=8, n_critic=2, lr_decay="cosine", lr_decay_start=0.25)

    def make() -> GanTrainer:
        return GanTrainer(SPEC, patchset.images, patchset.patient_index, hp=hp, dp=None, seed=0, total_steps=8)

    straight = make()
    lrs_straight = []
    for _ in range(8):
        straight.train_iteration()
        lrs_straight.append((straight.c_opt.param_groups[0]["lr"], straight.g_opt.param_groups[0]["lr"]))
    first = make()
    for _ in range(5):  # "killed" after 5 steps, mid-decay
        first.train_iteration()
    save_checkpoint(tmp_path / "ckpt.pt", first.state_dict())
    resumed = make()
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt"))
    lrs_resumed = []
    for _ in range(3):
        resumed.train_iteration()
        lrs_resumed.append((resumed.c_opt.param_groups[0]["lr"], resumed.g_opt.param_groups[0]["lr"]))
    assert lrs_resumed == lrs_straight[5:]
    for a, b in zip(_params(straight.generator), _params(resumed.generator)):
        assert np.array_equal(a, b)  # non-DP training is deterministic from the seed
    for a, b in zip(_params(straight.critic), _params(resumed.critic)):
        assert np.array_equal(a, b)


def test_a_checkpoint_planned_for_another_length_is_refused(patchset) -> None:
    hp = Hyperparameters(batch_size=8, lr_decay="linear")
    saved = GanTrainer(SPEC, patchset.images, patchset.patient_index, hp=hp, dp=None, seed=0, total_steps=8).state_dict()
    other = GanTrainer(SPEC, patchset.images, patchset.patient_index, hp=hp, dp=None, seed=0, total_steps=16)
    with pytest.raises(BadInputError, match="total_steps"):
        other.load_state_dict(saved)


def test_without_lr_decay_the_lr_stays_constant(patchset) -> None:
    trainer = _trainer(patchset, n_critic=1)
    for _ in range(3):
        trainer.train_iteration()
    assert trainer.c_opt.param_groups[0]["lr"] == trainer.g_opt.param_groups[0]["lr"] == 2e-4
    assert "lr_decay_total_steps" not in trainer.state_dict()


@pytest.mark.parametrize("kwargs", [{"lr_decay": "step"}, {"lr_decay": "Linear"}, {"lr_decay_start": 1.0},
                                    {"lr_decay_start": -0.1}, {"lr_decay_start": math.nan}])
def test_bad_lr_decay_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(BadInputError, match="lr_decay"):
        Hyperparameters(**kwargs)


@pytest.mark.parametrize("total", [None, 0])
def test_lr_decay_without_a_planned_length_is_refused(patchset, total) -> None:
    with pytest.raises(BadInputError, match="total_steps"):
        GanTrainer(SPEC, patchset.images, patchset.patient_index, hp=Hyperparameters(batch_size=8, lr_decay="cosine"),
                   dp=None, seed=0, total_steps=total)


# -- a critic narrower than the generator -----------------------------------------------------------
def test_the_critic_width_only_changes_the_critic(patchset) -> None:
    narrow = GanTrainer(GanSpec("wgan-gp", 32, width=16, critic_width=8), patchset.images, patchset.patient_index,
                        hp=Hyperparameters(batch_size=8), dp=None, seed=0)
    same = GanTrainer(GanSpec("wgan-gp", 32, width=16), patchset.images, patchset.patient_index,
                      hp=Hyperparameters(batch_size=8), dp=None, seed=0)
    reference = GanTrainer(GanSpec("wgan-gp", 32, width=8), patchset.images, patchset.patient_index,
                           hp=Hyperparameters(batch_size=8), dp=None, seed=0)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow.generator) == count(same.generator)
    assert count(narrow.critic) == count(reference.critic) < count(same.critic)
    narrow.train_iteration()


@pytest.mark.parametrize("bad", [1, 0, -8, 8.0, True])
def test_a_bad_critic_width_is_refused(bad) -> None:
    with pytest.raises(BadInputError, match="critic_width"):
        GanSpec("wgan-gp", 32, width=16, critic_width=bad)
