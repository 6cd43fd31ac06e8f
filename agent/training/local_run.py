"""A checkpointed local training run (``anonfed train``): config, budget, progress, resume, export.

Budget: DP steps are reserved in the site's durable accountant in chunks of ``checkpoint_every``
steps *before* the chunk runs; the run's own state file records how many steps are reserved, so a
resumed run first uses up steps it already paid for and never charges them twice. A crash can
only leave reserved-but-unused steps (over-counting), never unpaid steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml
from tqdm import tqdm

from agent.config import SiteConfig
from agent.dp.durable_accountant import atomic_write_json
from agent.models.architectures import GanSpec, parse_architecture
from agent.models.weights import sample_from_generator
from agent.training.checkpoints import load_checkpoint, save_checkpoint
from agent.training.export import PrivacyLabel, export_pairs
from agent.training.gan_trainer import GanTrainer, Hyperparameters
from agent.training.local_round import (
    RoundPlan,
    check_plan_against_policy,
    hyperparameters_for,
    mechanism_for,
    open_accountant,
)
from protocols.atomic_files import atomic_write
from protocols.errors import BadInputError, ConfigError
from protocols.tasks import PrivacyUnit, Task

log = logging.getLogger(__name__)

STATE_FILE = "run_state.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOSS_LOG = "losses.jsonl"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One local training run (YAML keys have the same names)."""

    architecture: str = "wgan-gp"
    patch_size: int = 32
    steps: int = 2000  # critic iterations = accountant steps
    target_epsilon: float | None = 8.0  # None: no DP, labelled epsilon = infinity
    delta: float | None = None  # None: the site policy's delta
    unit: PrivacyUnit | None = None  # None: the site policy's unit
    expected_batch_patients: int = 8
    max_grad_norm: float = 1.0
    seed: int = 0
    dataset_id: str = "tof"
    patches_per_volume: int = 64
    checkpoint_every: int = 100
    sample_count: int = 256
    n_critic: int | None = None  # None: family default (see hyperparameters_for)
    learning_rate: float | None = None
    # Decay of the generator weight EMA that the exported samples are drawn from (None: the raw
    # generator). Post-processing of the generator, so no privacy cost; the weights file stays raw.
    generator_ema: float | None = None
    # Learning-rate decay of both optimisers over this run's steps ("linear" or "cosine" from
    # lr_decay_start of the run; None: constant). Data-free, so no privacy cost; resumes exactly.
    lr_decay: str | None = None
    lr_decay_start: float = 0.5

    def __post_init__(self) -> None:
        parse_architecture(self.architecture)
        if self.steps < 1 or self.checkpoint_every < 1 or self.sample_count < 0 or self.patches_per_volume < 1:
            raise ConfigError("steps, checkpoint_every and patches_per_volume must be >= 1, sample_count >= 0")
        if self.target_epsilon is not None and not 0 < self.target_epsilon < math.inf:
            raise ConfigError(f"target_epsilon: expected a finite number > 0 or null (no DP), got {self.target_epsilon}")
        # validated with the trainer's own messages
        Hyperparameters(generator_ema=self.generator_ema, lr_decay=self.lr_decay, lr_decay_start=self.lr_decay_start)

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["unit"] = None if self.unit is None else PrivacyUnit(self.unit).value
        return d


def parse_run_config(raw: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Validate a YAML mapping (plus non-None command-line overrides) into a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        On an unknown key or an invalid value.
    """
    merged = dict(raw or {})
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ConfigError(f"training config: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(known))})")
    eps = merged.get("target_epsilon", RunConfig.target_epsilon)
    if isinstance(eps, str) and eps.lower() in {"inf", "none", "infinity"}:
        merged["target_epsilon"] = None
    if merged.get("unit") is not None:
        try:
            merged["unit"] = PrivacyUnit(merged["unit"])
        except ValueError as exc:
            raise ConfigError(f"training config: unit must be patient or image, got {merged['unit']!r}") from exc
    try:
        return RunConfig(**merged)
    except (TypeError, BadInputError) as exc:
        raise ConfigError(f"training config: {exc}") from exc


def load_run_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a training YAML file (optional) and apply overrides."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"training config {path}: expected a mapping at top level")
    return parse_run_config(raw, overrides)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    steps: int
    privacy: PrivacyLabel
    files: dict[str, Path]


def _plan_for(site: SiteConfig, run: RunConfig) -> RoundPlan:
    return RoundPlan(
        architecture=run.architecture,
        patch_size=run.patch_size,
        local_steps=run.steps,
        total_planned_steps=run.steps,
        target_epsilon=run.target_epsilon,
        delta=run.delta if run.delta is not None else site.privacy.delta,
        unit=PrivacyUnit(run.unit) if run.unit is not None else site.privacy.unit,
        expected_batch_patients=run.expected_batch_patients,
        max_grad_norm=run.max_grad_norm,
        seed=run.seed,
    )


def train_locally(
    site: SiteConfig, *, images: np.ndarray, patient_index: np.ndarray, num_patients: int, run: RunConfig,
    out_dir: Path, progress: bool = True,
) -> RunSummary:
    """Train (or resume) a run in ``out_dir``, then sample and export ``run.sample_count`` pairs.

    Raises
    ------
    BudgetExceededError
        Before any chunk whose steps would exceed the site's budget (earlier chunks stay valid).
    BadInputError
        If ``out_dir`` holds a run with a different configuration.
    PolicyError, TaskRefusedError
        If the site policy does not allow the run.
    """
    out_dir = Path(out_dir)
    plan = _plan_for(site, run)
    check_plan_against_policy(site, plan, num_patients)
    dp_on = run.target_epsilon is not None
    hp = hyperparameters_for(run.architecture, dp=dp_on)
    hp = dataclasses.replace(
        hp,
        n_critic=run.n_critic or hp.n_critic,
        critic_lr=run.learning_rate or hp.critic_lr,
        generator_lr=run.learning_rate or hp.generator_lr,
        generator_ema=run.generator_ema,
        lr_decay=run.lr_decay,
        lr_decay_start=run.lr_decay_start,
    )
    mech = mechanism_for(plan, num_patients=num_patients, num_patches=images.shape[0], hp=hp) if dp_on else None
    acc = open_accountant(site, run.dataset_id)
    state_path = out_dir / STATE_FILE
    state = _load_state(state_path, run)
    spec = GanSpec(parse_architecture(run.architecture), run.patch_size)
    trainer = GanTrainer(spec, images, patient_index, hp=hp, dp=mech, seed=run.seed, total_steps=run.steps)
    if (out_dir / CHECKPOINT_FILE).exists():
        trainer.load_state_dict(load_checkpoint(out_dir / CHECKPOINT_FILE))
        log.info("resuming at critic step %d of %d", trainer.critic_steps, run.steps)
    if not dp_on and not state["non_private_recorded"]:
        acc.record_non_private_release(steps=run.steps, unit=plan.unit, label=f"local run {out_dir.name}")
        state["non_private_recorded"] = True
        atomic_write_json(state_path, state)
    epsilon = acc.epsilon()
    bar = tqdm(total=run.steps, initial=trainer.critic_steps, disable=not progress, desc=f"{run.architecture}", unit="step")
    losses: dict[str, list[float]] = {"critic_loss": [], "generator_loss": []}
    while trainer.critic_steps < run.steps:
        if mech is not None and trainer.critic_steps >= state["reserved_steps"]:
            chunk = min(run.checkpoint_every, run.steps - state["reserved_steps"])
            epsilon = acc.reserve(
                noise_multiplier=mech.noise_multiplier, sample_rate=mech.sample_rate, steps=chunk, unit=mech.unit,
                max_epsilon=site.privacy.max_epsilon, label=f"local run {out_dir.name}", max_grad_norm=mech.max_grad_norm,
                task=Task.DPGAN,
            )
            state["reserved_steps"] += chunk
            atomic_write_json(state_path, state)
        for key, value in trainer.train_iteration().items():
            losses[key].append(value)
        bar.update(1)
        bar.set_postfix(eps="inf" if math.isinf(epsilon) else f"{epsilon:.3g}", refresh=False)
        if trainer.critic_steps % run.checkpoint_every == 0 or trainer.critic_steps == run.steps:
            _log_losses(out_dir / LOSS_LOG, trainer.critic_steps, losses, epsilon)
            losses = {"critic_loss": [], "generator_loss": []}
            save_checkpoint(out_dir / CHECKPOINT_FILE, trainer.state_dict())
    bar.close()
    privacy = PrivacyLabel(math.inf, None, None) if mech is None else PrivacyLabel(epsilon, acc.delta, mech.unit.value)
    pairs = sample_from_generator(trainer.sampling_generator, n=run.sample_count, seed=run.seed + 1)
    meta = {"architecture": run.architecture, "patch_size": run.patch_size, "critic_steps": trainer.critic_steps,
            "sampled_generator": "raw" if run.generator_ema is None else f"ema {run.generator_ema}"}
    if mech is not None:
        meta["mechanism"] = {"noise_multiplier": mech.noise_multiplier, "sample_rate": mech.sample_rate,
                             "max_grad_norm": mech.max_grad_norm, "accountant": acc.kind.value}
    files = export_pairs(pairs, out_dir / "samples", stem=f"synthetic_{run.architecture}", privacy=privacy, metadata=meta)
    weights_path = out_dir / f"weights_{run.architecture}_{privacy.tag}.npz"
    with atomic_write(weights_path) as fh:  # a crash never leaves a half-written model behind
        np.savez_compressed(fh, **trainer.weights())
    files["weights"] = weights_path
    state["status"] = "done"
    atomic_write_json(state_path, state)
    log.info("run done: %d steps, %s", trainer.critic_steps, privacy.describe())
    return RunSummary(trainer.critic_steps, privacy, files)


def _load_state(path: Path, run: RunConfig) -> dict[str, Any]:
    if not path.exists():
        state = {"config": run.as_json(), "reserved_steps": 0, "non_private_recorded": False, "status": "running"}
        atomic_write_json(path, state)
        return state
    state = json.loads(path.read_text(encoding="utf-8"))
    stored = dict(state.get("config") or {})
    # Run folders from before these options existed: raw generator sampled, constant lr.
    for key, default in (("generator_ema", None), ("lr_decay", None), ("lr_decay_start", RunConfig.lr_decay_start)):
        stored.setdefault(key, default)
    if stored != run.as_json():
        raise BadInputError(
            f"{path.parent} holds a run with a different configuration; resume it with the same settings or "
            "choose another --out folder"
        )
    return state


def _log_losses(path: Path, step: int, losses: dict[str, list[float]], epsilon: float) -> None:
    # Local log only: the critic loss is computed on real data and never leaves the site.
    row = {"step": step, "epsilon": "inf" if math.isinf(epsilon) else epsilon}
    row.update({k: float(np.mean(v)) for k, v in losses.items() if v})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    log.info("step %d: %s", step, row)
