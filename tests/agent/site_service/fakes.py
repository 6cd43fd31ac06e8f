"""A site config on a temporary folder and a tiny fake training engine (tests only; loaded by path).

The fake engine keeps a durable per-site spend file so policy and refusal logic can be tested
without training a GAN; the real DP-GAN path is exercised by tests/deployment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
from agent.config import SiteConfig, parse_site_config
from agent.site_service.engine import LocalData, RoundOutcome
from agent.site_service.policy import RoundTerms
from protocols.errors import BudgetExceededError
from protocols.messages import TrainInstruction

PATIENT_KEYS = frozenset({"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210", "00112233445566778899aabbccddeeff"})


def make_site(tmp_path: Path, **privacy) -> SiteConfig:
    (tmp_path / "data").mkdir(exist_ok=True)
    raw = {
        "site_id": "hospital-t",
        "sources": [{"path": "data"}],
        "state_dir": "state",
        "privacy": {"max_epsilon": 4.0, "delta": 1e-5, "accepted_tasks": ["dpgan", "synthesize"], **privacy},
    }
    return parse_site_config(raw, base_dir=tmp_path)


class FakeEngine:
    """Spends ``eps_per_round`` per round into a JSON file before returning, like the real engine.

    ``eps_per_round`` may be a list: the cost of the first, second, ... round (last one repeats).
    """

    def __init__(self, *, eps_per_round: float | list[float] = 1.5, patients: int = 3, patch: int = 8) -> None:
        self.schedule = list(eps_per_round) if isinstance(eps_per_round, (list, tuple)) else [eps_per_round]
        self.patients = patients
        self.patch = patch
        self.trained = 0
        rng = np.random.default_rng(987654)  # not a seed the tests sample with
        self.real = rng.uniform(-1, 1, size=(6, 2, patch, patch)).astype(np.float32)
        self.real[:, 1] = (self.real[:, 1] > 0).astype(np.float32)
        self.train_override = None
        self.sample_override = None

    def _ledger(self, site: SiteConfig) -> Path:
        return site.state.root / "fake-spend.json"

    def epsilon_spent(self, site: SiteConfig, *, dataset_id: str) -> float:
        path = self._ledger(site)
        return json.loads(path.read_text())["eps"] if path.is_file() else 0.0

    def load_data(self, site, *, dataset_id, patch_size, per_volume, seed) -> LocalData:
        return LocalData(self.real, self.patients, self.real[:, 0], PATIENT_KEYS)

    def reference_weights(self, *, architecture: str, patch_size: int) -> dict[str, np.ndarray]:
        return {"generator.w": np.zeros((4, patch_size), np.float32), "critic.w": np.zeros(4, np.float32)}

    @property
    def eps_per_round(self) -> float:
        return self.schedule[min(self.trained, len(self.schedule) - 1)]

    def train(self, site, *, data, weights, instruction: TrainInstruction, terms: RoundTerms) -> RoundOutcome:
        spent = self.epsilon_spent(site, dataset_id=instruction.dataset_id)
        if spent + self.eps_per_round > site.privacy.max_epsilon:
            raise BudgetExceededError(f"round would reach {spent + self.eps_per_round} > {site.privacy.max_epsilon}")
        site.state.root.mkdir(parents=True, exist_ok=True)
        cost = self.eps_per_round
        self._ledger(site).write_text(json.dumps({"eps": spent + cost}))
        self.trained += 1
        if self.train_override:
            return self.train_override(self, data, instruction, spent)
        base = weights or self.reference_weights(architecture=instruction.architecture, patch_size=instruction.patch_size)
        new = {k: v + 0.1 for k, v in base.items()}
        return RoundOutcome(
            weights=new, num_patients=data.num_patients, metrics={"loss.critic": -0.5},
            mechanism={"noise_multiplier": 1.2, "sample_rate": 0.5, "steps": instruction.local_steps,
                       "max_grad_norm": 1.0, "accountant": "rdp"},
            epsilon_round=cost, epsilon_cumulative=spent + cost,
        )

    def sample(self, weights: Mapping[str, np.ndarray], *, architecture, patch_size, n, seed) -> np.ndarray:
        if self.sample_override:
            return self.sample_override(self, n)
        rng = np.random.default_rng(seed)
        out = rng.uniform(-1, 1, size=(n, 2, patch_size, patch_size)).astype(np.float32)
        out[:, 1] = (out[:, 1] > 0).astype(np.float32)
        return out
