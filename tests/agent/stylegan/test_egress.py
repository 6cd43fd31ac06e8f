"""A ``local`` StyleGAN (no DP) must never leave the site: the model's own check and the guard's."""

import dataclasses

import pytest

from agent.stylegan.checkpoint import generator_arrays_for_release, load_checkpoint
from agent.stylegan.config import TrainingConfig, TrainingMode
from agent.stylegan.train import StyleGANTrainer
from protocols.errors import EgressBlockedError
from protocols.tasks import PrivacyUnit, Task

egress = pytest.importorskip("agent.guard.egress")
messages = pytest.importorskip("protocols.messages")


def _local_weights(tiny_arch):
    trainer = StyleGANTrainer(tiny_arch, TrainingConfig(), mode=TrainingMode.LOCAL, seed=0)
    return {f"generator.{k}": v.numpy().astype("float32") for k, v in trainer.G_ema.state_dict().items()}


def _reply_with(arrays):
    given = dict(run_id="run-1", round=1, site_id="hospital-a", task=Task.STYLEGAN_LOCAL, num_patients=10,
                 weights_sha256=messages.weights_sha256(arrays), epsilon_round=0.0, epsilon_cumulative=0.0,
                 delta=1e-5, unit=PrivacyUnit.PATIENT)
    # Optional mechanism fields (and any added later) stay None: a local model has no mechanism.
    fields = {f.name: given.get(f.name) for f in dataclasses.fields(messages.TrainReply)}
    return messages.Envelope(messages.TrainReply(**fields), arrays=arrays)


def test_local_checkpoint_cannot_be_exported(tiny_arch, tmp_path):
    trainer = StyleGANTrainer(tiny_arch, TrainingConfig(), mode=TrainingMode.LOCAL, seed=0)
    trainer.save(tmp_path / "local.pt")
    with pytest.raises(EgressBlockedError, match="may not leave the site"):
        generator_arrays_for_release(load_checkpoint(tmp_path / "local.pt"))


def test_guard_refuses_local_weights_without_a_plan(tiny_arch):
    with pytest.raises(EgressBlockedError, match="site-only model"):
        egress.check_outgoing(_reply_with(_local_weights(tiny_arch)), egress.EgressPolicy())


def test_guard_refuses_local_weights_even_against_a_matching_plan(tiny_arch):
    arrays = _local_weights(tiny_arch)
    policy = egress.EgressPolicy(expected_weights=egress.EgressPolicy.weights_spec(arrays))
    with pytest.raises(EgressBlockedError, match="site-only model"):
        egress.check_outgoing(_reply_with(arrays), policy)
