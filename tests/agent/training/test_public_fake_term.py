"""DP critic steps: what one patient can change in a step stays within the clipping norm.

With ``public_fake_term`` the fake-sample term's gradient is added unnoised, so these tests check
that it (and the seeded latent stream the generator step uses) does not depend on the private
Poisson draw -- not even on its size.
"""

from __future__ import annotations

import pytest
import torch

from agent.dp.sampling import UnitBatch
from agent.models import GanSpec
from agent.training.gan_trainer import DPSettings, GanTrainer, Hyperparameters
from protocols.tasks import PrivacyUnit

SPEC = GanSpec("wgan-gp", 32, width=8)
EXPECTED_UNITS = 4.0
PER_PATIENT = 6  # the patchset fixture: 8 patients x 6 patches, patient p owns rows 6p..6p+5


def _trainer(patchset, *, public: bool, c: float, **hp_kw) -> GanTrainer:
    dp = DPSettings(noise_multiplier=0.0, max_grad_norm=c, sample_rate=0.5, unit=PrivacyUnit.PATIENT,
                    expected_units=EXPECTED_UNITS)
    hp = Hyperparameters(batch_size=8, patches_per_patient=2, n_critic=1, public_fake_term=public, **hp_kw)
    return GanTrainer(SPEC, patchset.images, patchset.patient_index, hp=hp, dp=dp, seed=0)


def _batch(patients: int) -> UnitBatch:
    rows = [PER_PATIENT * p + i for p in range(patients) for i in range(2)]
    return UnitBatch(torch.tensor(rows), torch.arange(patients).repeat_interleave(2), patients)


def _critic_update(trainer: GanTrainer, batch: UnitBatch) -> torch.Tensor:
    """The averaged critic gradient the optimiser is given (noise 0), flattened."""
    trainer.sampler.draw = lambda: batch  # type: ignore[union-attr]
    seen: list[torch.Tensor] = []
    inner = trainer.c_opt.original_optimizer  # type: ignore[attr-defined]
    real_step = inner.step

    def capture(*args, **kwargs):
        seen.append(torch.cat([p.grad.flatten() for p in trainer.critic.parameters()]))
        return real_step(*args, **kwargs)

    inner.step = capture
    trainer.critic_step()
    return seen[0]


def test_the_unnoised_public_term_does_not_depend_on_the_private_draw(patchset) -> None:
    # Each drawn patient adds at most C (clipped) before averaging; the paired fakes come from OS
    # randomness, so two draws differ by at most (3 + 2) C / expected units in their private parts.
    # Everything else in the update is the public term, which must be the same for both draws.
    c = 1e-3  # tiny: the public part is orders of magnitude larger, so any dependence on the draw shows
    with_patient = _critic_update(_trainer(patchset, public=True, c=c), _batch(3))
    without = _critic_update(_trainer(patchset, public=True, c=c), _batch(2))
    assert float(without.norm()) > 100 * c  # the unclipped public term is really there
    assert float((with_patient - without).norm()) <= 5 * c / EXPECTED_UNITS * (1 + 1e-4)


def test_the_public_fake_term_replaces_the_paired_fake_scores_in_expectation(patchset) -> None:
    # Clipping off (huge C): both modes estimate the same expected gradient; with the paired fakes
    # inside, the fake term is weighted by the drawn patches / expected units, publicly by a constant.
    grads = {public: _critic_update(_trainer(patchset, public=public, c=1e6), _batch(4)) for public in (False, True)}
    cos = torch.nn.functional.cosine_similarity(grads[False], grads[True], dim=0)
    assert float(cos) > 0.9


def test_the_generator_steps_latents_do_not_depend_on_the_private_batch_size(patchset) -> None:
    states = []
    for patients in (2, 3):
        trainer = _trainer(patchset, public=True, c=1.0)
        trainer.sampler.draw = lambda p=patients: _batch(p)  # type: ignore[union-attr]
        trainer.critic_step()
        states.append(trainer.rng.get_state())
    assert torch.equal(states[0], states[1])


def test_with_the_penalty_on_fakes_the_public_part_still_does_not_depend_on_the_draw(patchset) -> None:
    c = 1e-3
    updates = []
    for patients in (3, 2):
        updates.append(_critic_update(_trainer(patchset, public=True, c=c, gp_at="fakes"), _batch(patients)))
    assert float(updates[1].norm()) > 100 * c
    assert float((updates[0] - updates[1]).norm()) <= 5 * c / EXPECTED_UNITS * (1 + 1e-4)


def test_an_unknown_penalty_point_is_a_bad_hyperparameter() -> None:
    from protocols.errors import BadInputError

    with pytest.raises(BadInputError, match="gp_at"):
        Hyperparameters(gp_at="reals")


def test_a_bounded_public_term_has_at_most_that_norm(patchset) -> None:
    bound = 1e-3
    unbounded = _trainer(patchset, public=True, c=1.0)._public_grads()
    bounded = _trainer(patchset, public=True, c=1.0, public_fake_clip=bound)._public_grads()
    norm = lambda g: float(torch.sqrt(sum(v.pow(2).sum() for v in g.values())))  # noqa: E731
    assert norm(unbounded) > 10 * bound and norm(bounded) == pytest.approx(bound, rel=1e-4)
    for k in unbounded:  # same direction
        torch.testing.assert_close(bounded[k], unbounded[k] * (bound / norm(unbounded)))


def test_a_bad_public_bound_is_refused() -> None:
    from protocols.errors import BadInputError

    with pytest.raises(BadInputError, match="public_fake_clip"):
        Hyperparameters(public_fake_term=True, public_fake_clip=0.0)
    with pytest.raises(BadInputError, match="needs public_fake_term"):
        Hyperparameters(public_fake_clip=1.0)  # would be silently ignored
