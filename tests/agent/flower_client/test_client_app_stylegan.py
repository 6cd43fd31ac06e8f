"""The ClientApp dispatches a stylegan-dp train message to the StyleGAN engine (tiny model, fundus phantoms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from agent.flower_client.app import app
from agent.training.local_round import current_epsilon
from agent.config import load_site_config
from protocols import messages as m
from protocols.tasks import PrivacyUnit, Task

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower needs the identity of the running task to build messages outside its runtime."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    torch.set_num_threads(1)


def _site_yaml(root: Path) -> Path:
    (root / "data").mkdir()
    path = root / "site.yaml"
    path.write_text(
        "site_id: hospital-f\nsources:\n  - path: data\nstate_dir: state\nprivacy:\n  max_epsilon: 8.0\n"
        "  delta: 1.0e-5\n  accepted_tasks: [stylegan-dp]\n"
    )
    return path


def test_stylegan_dp_train_message_is_trained_by_the_stylegan_engine(tmp_path, tiny_fundus, monkeypatch) -> None:
    monkeypatch.setattr("agent.ingest.datasets.load_fundus_images", lambda site, **kw: tiny_fundus)
    cfg = _site_yaml(tmp_path)
    ins = m.TrainInstruction(
        run_id="run-f", round=1, task=Task.STYLEGAN_DP, dataset_id="fundus", architecture="tiny16", patch_size=16,
        patches_per_volume=2, local_steps=1, total_planned_steps=2, target_epsilon=6.0, delta=1e-5,
        unit=PrivacyUnit.PATIENT, expected_batch_patients=3, max_grad_norm=1.0, seed=2,
    )
    request = Message(m.to_recorddict(m.Envelope(ins)), dst_node_id=5, message_type="train")
    context = Context(run_id=1, node_id=5, node_config={"site-config": str(cfg)}, state=RecordDict(), run_config={})
    env = m.from_recorddict(app(request, context).content)
    assert isinstance(env.message, m.TrainReply), env.message
    assert env.message.task is Task.STYLEGAN_DP and env.message.steps == 1
    assert env.message.epsilon_cumulative == pytest.approx(current_epsilon(load_site_config(cfg), "fundus"))
    assert any(k.startswith("discriminator.") for k in env.arrays)
    assert all(a.dtype == np.float32 for a in env.arrays.values())
