"""The site's own policy decisions for a request: the agent never trusts the coordinator.

The coordinator proposes (task, target epsilon, delta, unit); the site takes the stricter of its
policy and the proposal, refuses tasks it has not accepted, refuses to train on too few patients,
and refuses when its own accountant is already at its budget.
"""

from __future__ import annotations

import dataclasses
import logging

from agent.config import SiteConfig
from protocols.errors import BudgetExceededError, PolicyError, TaskRefusedError
from protocols.messages import TrainInstruction
from protocols.tasks import PrivacyUnit, Task

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RoundTerms:
    """The terms a site agrees to train under for one round."""

    target_epsilon: float
    delta: float
    unit: PrivacyUnit


def require_task(site: SiteConfig, task: Task) -> None:
    """Raise unless the site's policy accepts ``task``.

    Raises
    ------
    TaskRefusedError
        If ``task`` is not in ``privacy.accepted_tasks``.
    """
    if task not in site.privacy.accepted_tasks:
        accepted = ", ".join(sorted(t.value for t in site.privacy.accepted_tasks))
        raise TaskRefusedError(
            f"task {task.value} is not accepted by this site (accepted: {accepted}); add it to "
            "privacy.accepted_tasks if the site agrees"
        )


def decide_train_terms(site: SiteConfig, instruction: TrainInstruction, *, epsilon_spent: float) -> RoundTerms:
    """The stricter of the site's policy and the coordinator's proposal.

    Raises
    ------
    TaskRefusedError
        If the site does not accept DP-GAN training.
    BudgetExceededError
        If the site's accountant already stands at (or above) its ``max_epsilon``.
    """
    require_task(site, instruction.task)
    policy = site.privacy
    if epsilon_spent >= policy.max_epsilon:
        raise BudgetExceededError(
            f"site budget spent: cumulative epsilon {epsilon_spent:.4g} has reached privacy.max_epsilon "
            f"{policy.max_epsilon:.4g}; no further DP training is possible without a policy change"
        )
    target = instruction.target_epsilon if instruction.target_epsilon is not None else policy.max_epsilon
    if target > policy.max_epsilon:
        log.info("coordinator asked for target epsilon %.4g; site policy caps it at %.4g", target, policy.max_epsilon)
        target = policy.max_epsilon
    delta = min(instruction.delta, policy.delta)
    # Patient-level protects more than image-level: use it if either side asks for it.
    unit = PrivacyUnit.PATIENT if PrivacyUnit.PATIENT in (instruction.unit, policy.unit) else PrivacyUnit.IMAGE
    return RoundTerms(target_epsilon=target, delta=delta, unit=unit)


def require_patients(site: SiteConfig, num_patients: int) -> None:
    """Raise if the data hold fewer distinct patients than ``privacy.min_patients``.

    Raises
    ------
    PolicyError
        With the counts and the setting that decides.
    """
    if num_patients < site.privacy.min_patients:
        raise PolicyError(
            f"DP training needs at least privacy.min_patients={site.privacy.min_patients} distinct patients, "
            f"the site has {num_patients}; ingest more data or change the policy"
        )
