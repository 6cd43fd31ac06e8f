"""A signed claim must describe exactly the reply it travels in; a session writes its files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from coordinator.rounds import FederationPlan
from coordinator.rounds.session import SessionPaths, check_claim_matches_reply, load_initial_weights, run_session
from protocols import messages as m
from protocols.errors import ConfigError, IntegrityError
from protocols.ledger import GENESIS, Artifact, ArtifactKind, DpSgdMechanism, make_claim
from protocols.tasks import PrivacyUnit, Task


def _reply(**over) -> m.TrainReply:
    base = dict(run_id="run-1", round=2, site_id="hospital-a", task=Task.DPGAN, num_patients=3, weights_sha256="ab" * 32,
                epsilon_round=1.0, epsilon_cumulative=2.5, epsilon_next=None, delta=1e-5, unit=PrivacyUnit.PATIENT,
                noise_multiplier=1.0, sample_rate=0.5, steps=2, max_grad_norm=1.0, accountant="prv", claim=None)
    base.update(over)
    return m.TrainReply(**base)


def _claim(**over):
    base = dict(run_id="run-1", round=2, site="hospital-a", site_seq=1, site_prev=GENESIS, key_id="0" * 32,
                task=Task.DPGAN, dataset="tof",
                mechanism=DpSgdMechanism(1.0, 0.5, 2, 1.0, 1e-5, PrivacyUnit.PATIENT, "opacus-prv"),
                epsilon=1.0, cumulative_epsilon=2.5,
                artifacts=(Artifact("weights-r2", ArtifactKind.WEIGHTS, "ab" * 32, 10),))
    base.update(over)
    return make_claim(**base)


def test_matching_claim_passes() -> None:
    check_claim_matches_reply(_claim(), "hospital-a", _reply())


@pytest.mark.parametrize(
    ("claim_over", "pattern"),
    [
        ({"site": "hospital-b"}, "site"),
        ({"round": 1}, "round"),
        ({"run_id": "run-0"}, "run_id"),
        ({"artifacts": (Artifact("weights-r2", ArtifactKind.WEIGHTS, "cd" * 32, 10),)}, "artifact sha256"),
        ({"cumulative_epsilon": 2.4, "epsilon": 0.9}, "cumulative epsilon"),
        ({"start_weights_sha256": "ef" * 32}, "start weights sha256"),
    ],
)
def test_claim_that_describes_another_release_is_rejected(claim_over, pattern) -> None:
    with pytest.raises(IntegrityError, match=pattern):
        check_claim_matches_reply(_claim(**claim_over), "hospital-a", _reply())


def test_session_writes_summary_weights_budget_and_progress(consortium, tmp_path, monkeypatch) -> None:
    t = consortium(budgets=(9.0, 9.0, 9.0))
    plan = FederationPlan(rounds=1, patch_size=8, synth_count=2, run_id="run-s", architecture="wgan-gp")
    engine = t.nodes[1000][1]
    # the fake sites' model is tiny: start the coordinator from it instead of the real GAN
    monkeypatch.setattr("agent.models.initial_weights",
                        lambda *a, **k: engine.reference_weights(architecture="wgan-gp", patch_size=8))
    result = run_session(t, plan, SessionPaths(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rounds_completed"] == 1 and len(summary["outputs"]) == 3
    assert summary["ledger"] is None  # no keys folder: no ledger, and the run says so
    assert "without a privacy ledger" in (tmp_path / "out" / "progress.log").read_text()
    assert set(np.load(tmp_path / "out" / "global_weights.npz").files) == set(result.weights)
    assert json.loads((tmp_path / "out" / "budget.json").read_text())["sites"]["hospital-a"]["rounds_trained"] == 1


def test_round_one_starts_from_given_weights_and_the_summary_names_their_hash(consortium, tmp_path, monkeypatch) -> None:
    t = consortium(budgets=(9.0, 9.0, 9.0))
    engine = t.nodes[1000][1]
    reference = engine.reference_weights(architecture="wgan-gp", patch_size=8)
    monkeypatch.setattr("agent.models.initial_weights", lambda *a, **k: reference)
    start = tmp_path / "public.npz"
    np.savez(start, **{k: np.full_like(v, 2.0) for k, v in reference.items()})
    plan = FederationPlan(rounds=1, patch_size=8, synth_count=0, run_id="run-w", initial_weights=str(start))
    result = run_session(t, plan, SessionPaths(tmp_path / "out"))
    # every fake site adds 0.1 to what it receives: the average is the given start + 0.1, not the reference's
    assert all(np.allclose(v, 2.1) for v in result.weights.values())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["initial_weights"] == {
        "path": str(start), "sha256": hashlib.sha256(start.read_bytes()).hexdigest(),
        "weights_sha256": m.weights_sha256({k: np.full_like(v, 2.0) for k, v in reference.items()}),
    }
    assert summary["initial_weights"]["sha256"] in (tmp_path / "out" / "progress.log").read_text()


def test_initial_weights_of_another_architecture_or_broken_are_refused(tmp_path) -> None:
    reference = {"generator.w": np.zeros((2, 3), np.float32), "critic.w": np.zeros(4, np.float32)}
    cases = {
        "missing.npz": None,
        "not_npz.npz": b"not a zip file",
        "other_shape.npz": {"generator.w": np.zeros((3, 3)), "critic.w": np.zeros(4)},
        "other_names.npz": {"generator.w": np.zeros((2, 3)), "critic.v": np.zeros(4)},
        "nan.npz": {"generator.w": np.full((2, 3), np.nan), "critic.w": np.zeros(4)},
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            np.savez(path, **content)
        with pytest.raises(ConfigError, match="initial-weights"):
            load_initial_weights(path, reference=reference)
    with pytest.raises(ConfigError, match="only dpgan"):
        FederationPlan(task=Task.STYLEGAN_DP, architecture="lite-64", patch_size=64, dataset_id="fundus",
                       initial_weights=str(tmp_path / "w.npz"))
