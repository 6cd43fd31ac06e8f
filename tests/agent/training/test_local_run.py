"""Local training runs: resume after a kill without double charging, exports labelled by epsilon."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from agent.training import local_run
from agent.training.gan_trainer import GanTrainer
from agent.training.local_run import load_run_config, parse_run_config, train_locally
from protocols.cli import main as anonfed_main
from protocols.errors import BadInputError, ConfigError
from protocols.tasks import Task


def _run(**kw):
    base = dict(architecture="wgan-gp-sn", steps=4, target_epsilon=3.0, expected_batch_patients=2,
                checkpoint_every=2, sample_count=10)
    base.update(kw)
    return parse_run_config(base)


def _train(site, patchset, run, out, **kw):
    return train_locally(site, images=patchset.images, patient_index=patchset.patient_index,
                         num_patients=patchset.num_patients, run=run, out_dir=out, progress=False, **kw)


def _record_trainers(monkeypatch) -> list[GanTrainer]:
    """Every GanTrainer built from now on, in order (to inspect the one a run used)."""
    built: list[GanTrainer] = []
    real_init = GanTrainer.__init__

    def keep(self, *a, **kw):
        real_init(self, *a, **kw)
        built.append(self)

    monkeypatch.setattr(GanTrainer, "__init__", keep)
    return built


def test_a_killed_run_resumes_and_never_charges_steps_twice(make_site, patchset, tmp_path, monkeypatch) -> None:
    site = make_site()
    out = tmp_path / "run"
    real_iteration = GanTrainer.train_iteration

    def die_at_step_3(self):
        if self.critic_steps == 2 and not getattr(die_at_step_3, "fired", False):
            die_at_step_3.fired = True
            raise KeyboardInterrupt("killed")
        return real_iteration(self)

    monkeypatch.setattr(GanTrainer, "train_iteration", die_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        _train(site, patchset, _run(), out)
    history = json.loads((site.state.accountant / "tof.json").read_text())["history"]
    assert [h["steps"] for h in history] == [2, 2]  # chunk 2 was reserved before the kill
    summary = _train(site, patchset, _run(), out)
    assert summary.steps == 4
    history = json.loads((site.state.accountant / "tof.json").read_text())["history"]
    assert sum(h["steps"] for h in history) == 4  # the resumed run used the steps it had paid for
    logged = [json.loads(line)["step"] for line in (out / local_run.LOSS_LOG).read_text().splitlines()]
    assert logged == [2, 4]
    assert 0 < summary.privacy.epsilon <= 3.0


def test_exports_are_labelled_with_epsilon_in_name_and_sidecar(make_site, patchset, tmp_path) -> None:
    summary = _train(make_site(), patchset, _run(steps=2), tmp_path / "run")
    files = summary.files
    assert all(summary.privacy.tag in p.name for p in files.values())
    with np.load(files["npz"]) as data:
        assert data["images"].shape == (10, 32, 32) and set(np.unique(data["labels"])) <= {0, 1}
    assert nib.load(files["nifti_label"]).shape == (32, 32, 10)
    doc = json.loads(files["json"].read_text())
    assert doc["synthetic"] is True and doc["privacy"]["unit"] == "patient"
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_non_dp_run_is_labelled_epsilon_infinity_everywhere(make_site, patchset, tmp_path) -> None:
    site = make_site(tasks=(Task.DPGAN, Task.GAN_NODP))
    summary = _train(site, patchset, _run(architecture="dcgan", steps=2, target_epsilon=None), tmp_path / "run")
    assert math.isinf(summary.privacy.epsilon)
    assert all("eps-inf" in p.name for p in summary.files.values())
    doc = json.loads(summary.files["json"].read_text())
    assert doc["privacy"]["epsilon"] == "inf" and "no privacy guarantee" in doc["privacy"]["guarantee"]
    log_rows = [json.loads(x) for x in (tmp_path / "run" / local_run.LOSS_LOG).read_text().splitlines()]
    assert all(r["epsilon"] == "inf" for r in log_rows)


def test_resuming_with_another_configuration_is_refused(make_site, patchset, tmp_path) -> None:
    site = make_site()
    _train(site, patchset, _run(steps=2), tmp_path / "run")
    with pytest.raises(BadInputError, match="different configuration"):
        _train(site, patchset, _run(steps=2, seed=5), tmp_path / "run")


def test_unknown_config_keys_are_refused(tmp_path) -> None:
    (tmp_path / "t.yaml").write_text("architecture: wgan-gp\nlearning_rte: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rte'"):
        load_run_config(tmp_path / "t.yaml")


def test_the_train_command_runs_from_a_patch_npz(make_site, patchset, tmp_path, capsys) -> None:
    from agent.patching.patches import PatchSet

    site = make_site()
    config = tmp_path / "site.yaml"
    config.write_text(
        f"site_id: hospital-a\nsources: [{site.sources[0].path}]\nstate_dir: {site.state.root}\n"
        "privacy: {max_epsilon: 8.0, delta: 1.0e-5, accepted_tasks: [dpgan]}\n"
    )
    keys = np.asarray([f"p{i}" for i in patchset.patient_index])
    PatchSet(patchset.images, keys, patchset.patient_index.astype(np.int64), tuple(sorted(set(keys)))).save_npz(tmp_path / "p.npz")
    rc = anonfed_main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--patches", str(tmp_path / "p.npz"),
                       "--steps", "2", "--epsilon", "2", "--batch-patients", "2", "--samples", "4", "--no-progress"])
    assert rc == 0
    assert "differential privacy per patient" in capsys.readouterr().out


def test_a_run_with_a_generator_ema_exports_samples_of_the_ema(make_site, patchset, tmp_path, monkeypatch) -> None:
    sampled = []
    real_sample = local_run.sample_from_generator

    def spy(generator, **kw):
        sampled.append(generator)
        return real_sample(generator, **kw)

    monkeypatch.setattr(local_run, "sample_from_generator", spy)
    built = _record_trainers(monkeypatch)
    summary = _train(make_site(), patchset, _run(steps=2, generator_ema=0.99), tmp_path / "run")
    trainer = built[0]
    assert trainer.generator_ema is not None and sampled == [trainer.generator_ema]
    doc = json.loads(summary.files["json"].read_text())
    assert doc["sampled_generator"] == "ema 0.99"


def test_a_bad_generator_ema_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="generator_ema"):
        _run(generator_ema=1.5)


def test_a_run_folder_from_before_the_ema_option_still_resumes(make_site, patchset, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    config = _run(steps=2).as_json()
    del config["generator_ema"]
    (out / local_run.STATE_FILE).write_text(json.dumps(
        {"config": config, "reserved_steps": 0, "non_private_recorded": False, "status": "running"}))
    assert _train(make_site(), patchset, _run(steps=2), out).steps == 2
    with pytest.raises(BadInputError, match="different configuration"):
        _train(make_site(), patchset, _run(steps=2, generator_ema=0.9), out)


def test_a_run_with_lr_decay_ends_at_a_zero_learning_rate(make_site, patchset, tmp_path, monkeypatch) -> None:
    built = _record_trainers(monkeypatch)
    _train(make_site(), patchset, _run(steps=4, lr_decay="linear", lr_decay_start=0.5), tmp_path / "run")
    trainer = built[0]
    assert trainer.total_steps == 4
    assert [trainer.lr_factor_at(s) for s in range(5)] == [1.0, 1.0, 1.0, 0.5, 0.0]


def test_an_unknown_lr_decay_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lr_decay"):
        _run(lr_decay="exponential")


def test_a_non_dp_run_on_public_data_can_start_a_federation(make_site, patchset, tmp_path) -> None:
    """The weights file a run writes is what the coordinator's ``initial-weights`` accepts."""
    from agent.models import initial_weights
    from coordinator.rounds.session import load_initial_weights

    site = make_site(tasks=(Task.DPGAN, Task.GAN_NODP))
    summary = _train(site, patchset, _run(architecture="wgan-gp", steps=2, target_epsilon=None), tmp_path / "public")
    weights, digest = load_initial_weights(summary.files["weights"], reference=initial_weights("wgan-gp", 32, 0))
    assert len(digest) == 64 and set(weights) == set(initial_weights("wgan-gp", 32, 0))
