"""One set of policy rules for every DP round plan: the DP-GAN and StyleGAN plans are refused alike."""

from __future__ import annotations

import dataclasses
import math

import pytest

from agent.config import PrivacyPolicy
from agent.dp.plan_policy import check_dp_plan
from agent.stylegan.site_round import StyleGANRoundPlan
from agent.training.local_round import RoundPlan
from protocols.errors import BadInputError, BudgetExceededError, PolicyError, TaskRefusedError
from protocols.tasks import PrivacyUnit, Task

POLICY = PrivacyPolicy(8.0, 1e-5, PrivacyUnit.PATIENT, 5, 3, frozenset({Task.DPGAN, Task.STYLEGAN_DP}))
COMMON = dict(local_steps=2, total_planned_steps=10, target_epsilon=4.0, delta=1e-5, unit=PrivacyUnit.PATIENT,
              expected_batch_patients=3, max_grad_norm=1.0, seed=0)
PLANS = {
    Task.DPGAN: RoundPlan(architecture="wgan-gp", patch_size=32, **COMMON),
    Task.STYLEGAN_DP: StyleGANRoundPlan(**COMMON),
}

BAD = [
    (dict(local_steps=0), BadInputError),
    (dict(local_steps=11), BadInputError),
    (dict(target_epsilon=0.0), BadInputError),
    (dict(target_epsilon=math.inf), BadInputError),
    (dict(target_epsilon=math.nan), BadInputError),
    (dict(target_epsilon=8.5), BudgetExceededError),
    (dict(delta=1e-4), PolicyError),
    (dict(delta=0.0), PolicyError),
    (dict(unit=PrivacyUnit.IMAGE), PolicyError),
    (dict(max_grad_norm=0.0), BadInputError),
    (dict(expected_batch_patients=0), BadInputError),
    (dict(expected_batch_patients=11), BadInputError),  # more than the 10 patients there are
]


@pytest.mark.parametrize("task", list(PLANS))
def test_a_plan_within_the_policy_passes(task: Task) -> None:
    check_dp_plan(POLICY, task, PLANS[task], num_patients=10)


@pytest.mark.parametrize("task", list(PLANS))
@pytest.mark.parametrize(("change", "error"), BAD, ids=[next(iter(c)) + "=" + str(next(iter(c.values()))) for c, _ in BAD])
def test_both_engines_refuse_the_same_bad_plans(task: Task, change: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        check_dp_plan(POLICY, task, dataclasses.replace(PLANS[task], **change), num_patients=10)


@pytest.mark.parametrize("task", list(PLANS))
def test_too_few_patients_and_an_unaccepted_task_are_refused(task: Task) -> None:
    with pytest.raises(PolicyError, match="at least 3"):
        check_dp_plan(POLICY, task, dataclasses.replace(PLANS[task], expected_batch_patients=2), num_patients=2)
    other = dataclasses.replace(POLICY, accepted_tasks=frozenset({Task.SYNTHESIZE}))
    with pytest.raises(TaskRefusedError, match=task.value):
        check_dp_plan(other, task, PLANS[task], num_patients=10)
