"""A catch-up claim states the clip norm, privacy unit and task its steps were charged with.

The site's real durable accountant and claim log: an earlier round charged steps (clip 2.0, image
unit, StyleGAN) and crashed before it could reply; the next round (clip 1.0, patient unit, DP-GAN) claims them first.
Stating the reporting round's terms instead would misdescribe what was spent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_site_config
from agent.flower_client.enroll import enroll
from agent.site_service.claims import ledger_signer
from agent.training.local_round import open_accountant
from protocols.ledger import SignedClaim
from protocols.tasks import PrivacyUnit, Task


def _site(root: Path):
    (root / "data").mkdir(parents=True)
    raw = {"site_id": "hospital-a", "sources": [{"path": "data"}], "state_dir": "state",
           "privacy": {"max_epsilon": 12.0, "delta": 1e-5, "accepted_tasks": ["dpgan", "stylegan-dp"]}}
    site = parse_site_config(raw, base_dir=root)
    enroll(site)
    return site


def test_catch_up_claim_keeps_the_crashed_rounds_clip_norm_and_unit(tmp_path) -> None:
    site = _site(tmp_path)
    accountant = open_accountant(site, "tof")
    accountant.reserve(noise_multiplier=1.1, sample_rate=0.05, steps=30, unit=PrivacyUnit.IMAGE, max_epsilon=12.0,
                       label="round 1 (crashed)", max_grad_norm=2.0, task=Task.STYLEGAN_DP)
    cumulative = accountant.reserve(noise_multiplier=1.1, sample_rate=0.05, steps=20, unit=PrivacyUnit.PATIENT,
                                    max_epsilon=12.0, label="round 2", max_grad_norm=1.0, task=Task.DPGAN)
    fields = {"kind": "train", "task": "dpgan", "dataset_id": "tof", "run_id": "run-1", "round": 2,
              "noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 20, "max_grad_norm": 1.0, "delta": 1e-5,
              "unit": "patient", "accountant": "opacus-prv", "epsilon_cumulative": cumulative,
              "weights_sha256": "0" * 64, "size": 10, "ledger_claims_held": 0}
    pending = ledger_signer(site, fields)
    assert pending is not None
    (catch_up,) = [SignedClaim.from_bytes(b).claim for b in pending.prior]
    own = SignedClaim.from_bytes(pending.payload).claim
    assert (catch_up.mechanism.steps, catch_up.mechanism.max_grad_norm, catch_up.mechanism.unit) == (30, 2.0, PrivacyUnit.IMAGE)
    assert (own.mechanism.steps, own.mechanism.max_grad_norm, own.mechanism.unit) == (20, 1.0, PrivacyUnit.PATIENT)
    assert (catch_up.task, own.task) == (Task.STYLEGAN_DP, Task.DPGAN)
    assert catch_up.artifacts == () and own.cumulative_epsilon == pytest.approx(cumulative)
    assert catch_up.cumulative_epsilon < own.cumulative_epsilon
