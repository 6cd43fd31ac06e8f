"""The coordinator's plan for a federated run (DP-GAN or StyleGAN2 with a DP discriminator), parsed
from Flower's run config."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping

from protocols.errors import ConfigError
from protocols.messages import FEDERATED_TRAINING_TASKS, KsalsaQuery, SynthesizeQuery, TrainInstruction
from protocols.tasks import PrivacyUnit, Task

MAX_ROUNDS = 1000


@dataclasses.dataclass(frozen=True)
class FederationPlan:
    """Everything that decides a run; every field has a run-config key (``-`` for ``_``)."""

    rounds: int = 3
    # dpgan: TOF image+label patches; stylegan-dp: fundus StyleGAN2 (architecture = its configuration,
    # patch_size = its resolution, dataset_id = "fundus"). Both under DP-SGD in each site's accountant.
    task: Task = Task.DPGAN
    architecture: str = "wgan-gp"
    patch_size: int = 32
    patches_per_volume: int = 16
    local_steps: int = 2
    target_epsilon: float = 8.0  # per-site target after all planned rounds; sites may cap it lower
    delta: float = 1e-5
    unit: PrivacyUnit = PrivacyUnit.PATIENT
    expected_batch_patients: int = 3
    max_grad_norm: float = 1.0
    seed: int = 0
    dataset_id: str = "tof"
    consortium_budget: float = 10.0  # per-site epsilon the consortium allows
    synth_count: int = 16
    ksalsa_k: int = 0  # > 0: ask every site for a k-anonymous release with this k after training
    ksalsa_method: str = "k-same-pixel"  # ksalsa | centroid need site models; the k-Same baselines do not
    ksalsa_steps: int = 100
    ksalsa_dataset: str = "fundus"
    reply_timeout_s: float = 1800.0
    min_sites: int = 1  # wait for this many connected nodes before starting
    wait_for_sites_s: float = 120.0
    run_id: str = ""
    # dpgan: an .npz of generator + critic weights that round 1 starts from instead of the seed's
    # initialisation, e.g. a model trained WITHOUT DP on PUBLIC data (`anonfed train` writes one).
    # Its SHA-256 goes into progress.log and summary.json. The sites' guarantee covers their own data
    # only: what these weights were trained on is the consortium's responsibility to declare.
    initial_weights: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ConfigError(f"num-rounds: expected 1..{MAX_ROUNDS}, got {self.rounds}")
        if self.local_steps < 1 or self.synth_count < 0:
            raise ConfigError("local-steps must be >= 1 and synth-count >= 0")
        if self.task not in FEDERATED_TRAINING_TASKS:
            allowed = ", ".join(sorted(t.value for t in FEDERATED_TRAINING_TASKS))
            raise ConfigError(f"task: federated rounds run one of {allowed}, got {self.task.value!r}; models trained "
                              "without DP (stylegan-local) never leave their site and are trained there")
        if self.initial_weights and self.task is not Task.DPGAN:
            raise ConfigError(f"initial-weights: only dpgan runs start from given weights; {self.task.value} sites "
                              "initialise their model from the round seed")
        if not self.run_id:
            object.__setattr__(self, "run_id", "run-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S"))

    @property
    def total_planned_steps(self) -> int:
        return self.rounds * self.local_steps

    def train_instruction(self, round_: int) -> TrainInstruction:
        return TrainInstruction(
            run_id=self.run_id, round=round_, task=self.task, dataset_id=self.dataset_id,
            architecture=self.architecture, patch_size=self.patch_size, patches_per_volume=self.patches_per_volume,
            local_steps=self.local_steps, total_planned_steps=self.total_planned_steps,
            target_epsilon=self.target_epsilon, delta=self.delta, unit=self.unit,
            expected_batch_patients=self.expected_batch_patients, max_grad_norm=self.max_grad_norm,
            seed=self.seed * 100_003 + round_,
        )

    def ksalsa_query(self, round_: int) -> KsalsaQuery:
        return KsalsaQuery(run_id=self.run_id, round=round_, k=self.ksalsa_k, method=self.ksalsa_method,
                           steps=self.ksalsa_steps, dataset_id=self.ksalsa_dataset)

    def synthesize_query(self, round_: int, site_index: int) -> SynthesizeQuery:
        return SynthesizeQuery(
            run_id=self.run_id, round=round_, count=self.synth_count, seed=self.seed * 7919 + site_index,
            architecture=self.architecture, patch_size=self.patch_size,
        )

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> "FederationPlan":
        """Build from Flower's run config (keys like ``num-rounds``; unknown anonfed keys rejected).

        Raises
        ------
        ConfigError
            On an unknown key or a value of the wrong type.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        aliases = {"num-rounds": "rounds"}
        kwargs: dict[str, Any] = {}
        for key, value in cfg.items():
            name = aliases.get(key, key.replace("-", "_"))
            if key in _IGNORED_KEYS:
                continue
            if name not in fields:
                raise ConfigError(f"run config key {key!r} is unknown; known: {sorted(_keys())}")
            default = fields[name].default
            try:
                if isinstance(default, (PrivacyUnit, Task)):
                    value = type(default)(value)
                elif isinstance(default, bool) or not isinstance(default, (int, float, str)):
                    pass
                elif isinstance(default, float):
                    value = float(value)
                elif isinstance(default, int):
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError(value)
                    value = int(value)
                else:
                    value = str(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"run config {key!r}: cannot use {value!r} ({exc})") from exc
            kwargs[name] = value
        return cls(**kwargs)


#: Run-config keys read by the adapters, not by the plan.
_IGNORED_KEYS = frozenset({"output-dir", "keys-dir", "simulation-configs"})


def _keys() -> list[str]:
    return ["num-rounds"] + [f.name.replace("_", "-") for f in dataclasses.fields(FederationPlan) if f.name != "rounds"]
