"""The site policy's checks on a DP round plan, one copy for every DP engine.

The DP-GAN round (:mod:`agent.training.local_round`) and the StyleGAN round
(:mod:`agent.stylegan.site_round`) plan different models but spend privacy the same way; their
plans are refused by the same rules here, so the two engines cannot drift apart on what a site
allows.
"""

from __future__ import annotations

import math
from typing import Protocol

from agent.config import PrivacyPolicy
from protocols.errors import BadInputError, BudgetExceededError, PolicyError, TaskRefusedError
from protocols.tasks import PrivacyUnit, Task


class DpRoundPlan(Protocol):
    """The privacy-relevant fields every DP round plan carries."""

    @property
    def local_steps(self) -> int: ...  # accountant steps this round

    @property
    def total_planned_steps(self) -> int: ...  # over all rounds; noise is calibrated for this total

    @property
    def target_epsilon(self) -> float | None: ...

    @property
    def delta(self) -> float: ...

    @property
    def unit(self) -> PrivacyUnit: ...

    @property
    def expected_batch_patients(self) -> int: ...

    @property
    def max_grad_norm(self) -> float: ...


def check_round_steps(plan: DpRoundPlan) -> None:
    """Raise :class:`BadInputError` unless ``1 <= local_steps <= total_planned_steps``."""
    if not 1 <= plan.local_steps <= plan.total_planned_steps:
        raise BadInputError(
            f"round plan: expected 1 <= local_steps <= total_planned_steps, got {plan.local_steps} and "
            f"{plan.total_planned_steps}"
        )


def check_dp_plan(policy: PrivacyPolicy, task: Task, plan: DpRoundPlan, num_patients: int) -> None:
    """Refuse a DP round plan for ``task`` that ``policy`` does not allow.

    Raises
    ------
    BadInputError
        If the step counts, target epsilon, clipping norm or expected batch are malformed.
    TaskRefusedError
        If the site does not accept ``task``.
    BudgetExceededError
        If the plan targets more epsilon than ``policy.max_epsilon``.
    PolicyError
        If the plan's delta is weaker than the policy's, it protects images where the site requires
        patients, or the data hold fewer than ``policy.min_patients`` patients.
    """
    check_round_steps(plan)
    if task not in policy.accepted_tasks:
        raise TaskRefusedError(f"the site does not accept task {task.value!r}; add it to privacy.accepted_tasks")
    eps = plan.target_epsilon
    if eps is None or not 0 < eps < math.inf:
        raise BadInputError(f"round plan: target_epsilon must be finite and > 0, got {eps}")
    if eps > policy.max_epsilon:
        raise BudgetExceededError(
            f"round plan targets epsilon {eps:g}, above the site policy max_epsilon={policy.max_epsilon:g}; the "
            "coordinator must plan within the site's budget"
        )
    if not 0 < plan.delta <= policy.delta:
        raise PolicyError(f"round plan delta={plan.delta:g} is weaker than the site policy delta={policy.delta:g}")
    if PrivacyUnit(plan.unit) is PrivacyUnit.IMAGE and policy.unit is PrivacyUnit.PATIENT:
        raise PolicyError(
            "round plan protects single images (unit=image) but the site policy requires unit=patient; "
            "re-plan with unit=patient"
        )
    if num_patients < policy.min_patients:
        raise PolicyError(
            f"only {num_patients} patient(s) in this dataset, the site policy requires at least "
            f"{policy.min_patients} for DP training"
        )
    if not (plan.max_grad_norm > 0 and 1 <= plan.expected_batch_patients <= num_patients):
        raise BadInputError(
            f"round plan: need max_grad_norm > 0 and 1 <= expected_batch_patients <= {num_patients} (the "
            f"patients in this dataset); got {plan.max_grad_norm:g} and {plan.expected_batch_patients}"
        )
