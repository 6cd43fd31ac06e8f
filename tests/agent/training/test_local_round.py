"""The federation entry point: policy checks, write-ahead budget, composition, epsilon labels."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from agent.models import initial_weights
from agent.training import local_round
from agent.training.gan_trainer import GanTrainer
from agent.training.local_round import RoundPlan, current_epsilon, remaining_budget, run_local_round
from protocols.errors import BudgetExceededError, PolicyError, TaskRefusedError
from protocols.tasks import PrivacyUnit, Task

PLAN = RoundPlan(
    architecture="wgan-gp",
    patch_size=32,
    local_steps=2,
    total_planned_steps=4,
    target_epsilon=2.0,
    delta=1e-5,
    unit=PrivacyUnit.PATIENT,
    expected_batch_patients=2,
    max_grad_norm=1.0,
    seed=0,
)


def _history(site, dataset_id="tof"):
    return json.loads((site.state.accountant / f"{dataset_id}.json").read_text())["history"]


def test_a_dp_round_returns_float32_weights_mechanism_and_dp_safe_metrics(make_site, patchset) -> None:
    site = make_site()
    result = run_local_round(site=site, dataset_id="tof", patches=patchset, weights=None, plan=PLAN)
    init = initial_weights("wgan-gp", 32, 0)
    assert set(result.weights) == set(init)
    assert all(v.dtype == np.float32 and v.shape == init[k].shape for k, v in result.weights.items())
    assert not np.array_equal(result.weights["critic.convs.0.weight"], init["critic.convs.0.weight"])
    assert result.num_patients == 8
    mech = result.mechanism
    assert mech["sample_rate"] == pytest.approx(2 / 8) and mech["steps"] == 2 and mech["unit"] == "patient"
    assert mech["accountant"] == "prv" and mech["delta"] == 1e-5 and mech["noise_multiplier"] > 0
    assert "critic_loss" not in result.metrics  # computed on real data, not DP: never released
    assert result.metrics["critic_steps"] == 2
    assert 0 < result.epsilon_round == result.epsilon_cumulative <= PLAN.target_epsilon
    assert current_epsilon(site, "tof") == result.epsilon_cumulative
    assert _history(site)[0]["steps"] == 2


def test_rounds_compose_and_a_run_past_its_budget_stops_before_exceeding_it(make_site, patchset) -> None:
    site = make_site(max_epsilon=2.0)
    first = run_local_round(site=site, dataset_id="tof", patches=patchset, weights=None, plan=PLAN)
    second = run_local_round(site=site, dataset_id="tof", patches=patchset, weights=first.weights, plan=PLAN)
    assert first.epsilon_cumulative < second.epsilon_cumulative <= 2.0
    assert second.epsilon_round == pytest.approx(first.epsilon_round)
    on_disk = _history(site)
    with pytest.raises(BudgetExceededError, match="above the site policy max_epsilon=2"):
        run_local_round(site=site, dataset_id="tof", patches=patchset, weights=second.weights, plan=PLAN)
    assert _history(site) == on_disk  # the refused round wrote nothing
    status = remaining_budget(site, "tof")
    assert status.epsilon_spent == pytest.approx(second.epsilon_cumulative) and status.epsilon_spent <= 2.0
    assert status.steps == 4


def test_a_crash_after_the_reservation_leaves_the_spend_on_disk(make_site, patchset, monkeypatch) -> None:
    site = make_site()

    def crash(self):
        raise RuntimeError("injected crash during training")

    monkeypatch.setattr(GanTrainer, "train_iteration", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_local_round(site=site, dataset_id="tof", patches=patchset, weights=None, plan=PLAN)
    assert [h["steps"] for h in _history(site)] == [PLAN.local_steps]
    assert current_epsilon(site, "tof") > 0


def test_a_non_dp_round_is_labelled_epsilon_infinity(make_site, patchset) -> None:
    site = make_site(tasks=(Task.DPGAN, Task.GAN_NODP))
    plan = dataclasses.replace(PLAN, target_epsilon=None, architecture="dcgan")
    result = run_local_round(site=site, dataset_id="tof", patches=patchset, weights=None, plan=plan)
    assert result.mechanism is None
    assert math.isinf(result.epsilon_round) and math.isinf(result.epsilon_cumulative)
    assert "critic_loss" in result.metrics
    assert math.isinf(remaining_budget(site, "tof").epsilon_spent)
    with pytest.raises(BudgetExceededError, match="WITHOUT differential privacy was already released"):
        run_local_round(site=site, dataset_id="tof", patches=patchset, weights=None, plan=PLAN)


def test_a_non_dp_round_needs_the_site_to_accept_gan_nodp(make_site, patchset) -> None:
    with pytest.raises(TaskRefusedError, match="gan-nodp"):
        run_local_round(
            site=make_site(), dataset_id="tof", patches=patchset, weights=None,
            plan=dataclasses.replace(PLAN, target_epsilon=None),
        )


def test_a_target_above_the_site_budget_is_refused_before_anything_is_written(make_site, patchset) -> None:
    site = make_site(max_epsilon=1.0)
    with pytest.raises(BudgetExceededError, match="targets epsilon 2"):
        run_local_round(site=site, dataset_id="tof", patches=patchset, weights=None, plan=PLAN)
    assert not (site.state.accountant / "tof.json").exists()


def test_image_unit_is_refused_when_the_site_requires_patients(make_site, patchset) -> None:
    with pytest.raises(PolicyError, match="requires unit=patient"):
        run_local_round(site=make_site(), dataset_id="tof", patches=patchset, weights=None,
                        plan=dataclasses.replace(PLAN, unit=PrivacyUnit.IMAGE))


def test_a_weaker_delta_is_refused(make_site, patchset) -> None:
    with pytest.raises(PolicyError, match="weaker than the site policy delta"):
        run_local_round(site=make_site(), dataset_id="tof", patches=patchset, weights=None,
                        plan=dataclasses.replace(PLAN, delta=1e-3))


def test_too_few_patients_are_refused(make_site, patchset) -> None:
    with pytest.raises(PolicyError, match="at least 20"):
        run_local_round(site=make_site(min_patients=20), dataset_id="tof", patches=patchset, weights=None, plan=PLAN)


def test_noise_is_calibrated_for_the_whole_plan(make_site, patchset) -> None:
    hp = local_round.hyperparameters_for("wgan-gp", dp=True)
    short = local_round.mechanism_for(dataclasses.replace(PLAN, total_planned_steps=4), num_patients=8, num_patches=48, hp=hp)
    long = local_round.mechanism_for(dataclasses.replace(PLAN, total_planned_steps=40), num_patients=8, num_patches=48, hp=hp)
    assert long.noise_multiplier > short.noise_multiplier


def test_a_round_on_real_phantom_patches_counts_patients_not_volumes(make_site, tiny_volumes) -> None:
    from agent.patching.patches import extract_patches

    patches = extract_patches(tiny_volumes, size=32, per_volume=4, rng=np.random.default_rng(0))
    assert len(tiny_volumes) == 4 and patches.num_patients == 3
    plan = dataclasses.replace(PLAN, expected_batch_patients=1)
    result = run_local_round(site=make_site(), dataset_id="tof", patches=patches, weights=None, plan=plan)
    assert result.num_patients == 3
    assert result.mechanism["sample_rate"] == pytest.approx(1 / 3)
    assert all(np.isfinite(v).all() for v in result.weights.values())
