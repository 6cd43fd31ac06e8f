"""DP critic steps with ``public_penalty``: the gradient penalty (on the fakes) outside DP-SGD.

The fake term stays in each patient's clipped real-minus-fake gradient; only the penalty's gradient
is added unnoised, so these tests check that it does not depend on the private Poisson draw (not
even on its size) and that the option is refused where the penalty would hold private data.
"""

from __future__ import annotations

import pytest
import torch

from agent.dp.critic_loss import public_fake_losses
from agent.dp.sampling import UnitBatch
from agent.models import GanSpec
from agent.training.gan_trainer import DPSettings, GanTrainer, Hyperparameters
from protocols.errors import BadInputError
from protocols.tasks import PrivacyUnit

from .test_public_fake_term import EXPECTED_UNITS, SPEC, _batch, _critic_update


def _trainer(patchset, *, c: float, public_penalty: bool = True, spec: GanSpec = SPEC) -> GanTrainer:
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=c, sample_rate=0.5, unit=PrivacyUnit.PATIENT,
                    expected_units=EXPECTED_UNITS)
    hp = Hyperparameters(batch_size=8, patches_per_patient=2, n_critic=1, gp_at="fakes", public_penalty=public_penalty)
    return GanTrainer(spec, patchset.images, patchset.patient_index, hp=hp, dp=dp, seed=0)


def test_the_public_penalty_does_not_change_when_a_patient_is_added_to_the_draw(patchset) -> None:
    # Each drawn patient adds at most C (clipped) before averaging, so two draws of 3 and 2 patients
    # differ by at most (3 + 2) C / expected units in their private parts; the rest of the update is
    # the public penalty, which must be identical.
    c = 1e-3  # tiny: the unclipped penalty is orders of magnitude larger, so any dependence shows
    with_patient = _critic_update(_trainer(patchset, c=c), _batch(3))
    without = _critic_update(_trainer(patchset, c=c), _batch(2))
    assert float(without.norm()) > 100 * c  # the unclipped public penalty is really there
    assert float((with_patient - without).norm()) <= 5 * c / EXPECTED_UNITS * (1 + 1e-4)


def test_the_public_penalty_a_step_adds_is_the_same_for_any_draw(patchset) -> None:
    grads = []
    for patients in (0, 2, 3):  # an empty draw too: the step is then noise plus the public penalty
        trainer = _trainer(patchset, c=1.0)
        empty = UnitBatch(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 0)
        trainer.sampler.draw = lambda p=patients: _batch(p) if p else empty  # type: ignore[union-attr]
        compute = trainer._public_grads
        trainer._public_grads = lambda: grads.append(compute()) or grads[-1]  # type: ignore[method-assign]
        trainer.critic_step()
    assert len(grads) == 3
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]) and torch.equal(grads[0][k], grads[2][k]), k


def test_the_public_penalty_is_the_penalty_on_a_constant_number_of_seeded_fakes(patchset) -> None:
    trainer = _trainer(patchset, c=1.0)
    state = trainer.rng.get_state()
    got = trainer._public_grads()
    trainer.rng.set_state(state)
    fake = trainer._fakes(trainer.hp.batch_size)  # hp.batch_size, not the Poisson draw's size
    loss = public_fake_losses(trainer.critic, fake, trainer.objective, fake_term=False).mean() * trainer.hp.patches_per_patient
    loss.backward()
    for k, p in trainer.critic.named_parameters():
        want = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got[k], want)
    assert float(torch.cat([g.flatten() for g in got.values()]).norm()) > 0


def test_the_generator_steps_latents_do_not_depend_on_the_private_batch_size(patchset) -> None:
    states = []
    for patients in (2, 3):
        trainer = _trainer(patchset, c=1.0)
        trainer.sampler.draw = lambda p=patients: _batch(p)  # type: ignore[union-attr]
        trainer.critic_step()
        states.append(trainer.rng.get_state())
    assert torch.equal(states[0], states[1])


def test_the_private_part_keeps_the_fake_term(patchset) -> None:
    # With the penalty out and clipping off (huge C), the update minus the public penalty is the
    # averaged -D(x) + D(x~) of the drawn patches: the fake term did not leave with the penalty.
    trainer = _trainer(patchset, c=1e6)
    batch = _batch(2)
    state = trainer.rng.get_state()
    public = torch.cat([g.flatten() for g in trainer._public_grads().values()])
    trainer.rng.set_state(state)
    update = _critic_update(trainer, batch)
    private = update - public
    assert float(private.norm()) > 1e-3 * float(public.norm())
    real_only = _trainer(patchset, c=1e6)
    real = real_only.data[batch.sample_index]
    real_only.critic.zero_grad(set_to_none=True)
    (-real_only.critic(real).sum() / EXPECTED_UNITS).backward()
    real_term = torch.cat([p.grad.flatten() for p in real_only.critic.parameters()])
    assert float((private - real_term).norm()) > 1e-3 * float(real_term.norm())  # a fake term is in there


def test_the_public_penalty_needs_the_penalty_on_the_fakes() -> None:
    with pytest.raises(BadInputError, match="needs gp_at='fakes'"):
        Hyperparameters(public_penalty=True)  # gp_at defaults to "interpolates": private data
    with pytest.raises(BadInputError, match="needs gp_at='fakes'"):
        Hyperparameters(public_penalty=True, gp_at="interpolates")
    Hyperparameters(public_penalty=True, gp_at="fakes")  # accepted


def test_the_public_penalty_and_the_public_fake_term_are_not_combined() -> None:
    with pytest.raises(BadInputError, match="set only one"):
        Hyperparameters(public_penalty=True, public_fake_term=True, gp_at="fakes")


def test_a_critic_loss_without_a_penalty_refuses_the_public_penalty(patchset) -> None:
    with pytest.raises(BadInputError, match="no gradient penalty"):
        _trainer(patchset, c=1.0, spec=GanSpec("dcgan", 32, width=8))
