"""The StyleGAN site rounds under the site's policy and durable accountant."""

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.config import FolderSource, PrivacyPolicy, SiteConfig, StatePaths
from agent.stylegan.checkpoint import load_checkpoint
from agent.stylegan.site_round import StyleGANRoundPlan, run_stylegan_dp_round, run_stylegan_local
from agent.training.local_round import open_accountant
from protocols.errors import BudgetExceededError, TaskRefusedError
from protocols.tasks import PrivacyUnit, Task


def _site(tmp_path: Path, tasks, max_epsilon=8.0) -> SiteConfig:
    (tmp_path / "data").mkdir(exist_ok=True)
    policy = PrivacyPolicy(max_epsilon, 1e-5, PrivacyUnit.PATIENT, 5, 3, frozenset(tasks))
    return SiteConfig("hospital-a", (FolderSource(tmp_path / "data"),), StatePaths(tmp_path / "state"), policy)


def _plan(**kw):
    base = dict(local_steps=2, total_planned_steps=10, target_epsilon=5.0, delta=1e-5, unit=PrivacyUnit.PATIENT,
                expected_batch_patients=3, max_grad_norm=1.0, seed=0)
    return StyleGANRoundPlan(**{**base, **kw})


def test_dp_round_reserves_budget_and_releases_arrays(tmp_path, tiny_arch, tiny_train, real_images):
    images, patients = real_images
    site = _site(tmp_path, {Task.STYLEGAN_DP})
    result = run_stylegan_dp_round(site=site, dataset_id="fundus", images=images, patient_index=patients,
                                   weights=None, plan=_plan(), arch=tiny_arch, train=tiny_train)
    assert result.mechanism["steps"] == 2 and result.mechanism["unit"] == "patient"
    assert 0 < result.epsilon_round <= result.epsilon_cumulative < 5.0
    assert open_accountant(site, "fundus").total_steps == 2  # charged on disk
    assert "d_loss" not in result.metrics and "discriminator_loss" not in result.metrics
    assert all(v.dtype == np.float32 for v in result.weights.values())

    # Next round starts from the aggregated weights and adds to the same accountant.
    again = run_stylegan_dp_round(site=site, dataset_id="fundus", images=images, patient_index=patients,
                                  weights=result.weights, plan=_plan(seed=1), arch=tiny_arch, train=tiny_train)
    assert again.epsilon_cumulative > result.epsilon_cumulative
    assert open_accountant(site, "fundus").total_steps == 4


def test_dp_round_refused_without_task_or_budget(tmp_path, tiny_arch, tiny_train, real_images):
    images, patients = real_images
    with pytest.raises(TaskRefusedError, match="stylegan-dp"):
        run_stylegan_dp_round(site=_site(tmp_path, {Task.DPGAN}), dataset_id="fundus", images=images,
                              patient_index=patients, weights=None, plan=_plan(), arch=tiny_arch, train=tiny_train)
    with pytest.raises(BudgetExceededError, match="above the site policy max_epsilon"):
        run_stylegan_dp_round(site=_site(tmp_path, {Task.STYLEGAN_DP}, max_epsilon=2.0), dataset_id="fundus",
                              images=images, patient_index=patients, weights=None, plan=_plan(),
                              arch=tiny_arch, train=tiny_train)
    assert open_accountant(_site(tmp_path, {Task.STYLEGAN_DP}), "fundus").total_steps == 0


def test_local_round_keeps_a_site_only_checkpoint_and_resumes(tmp_path, tiny_arch, tiny_train, real_images):
    images, patients = real_images
    site = _site(tmp_path, {Task.STYLEGAN_LOCAL})
    ckpt = tmp_path / "state" / "stylegan-local.pt"
    run_stylegan_local(site=site, images=images, patient_index=patients, steps=2, arch=tiny_arch, train=tiny_train,
                       seed=0, checkpoint=ckpt)
    run_stylegan_local(site=site, images=images, patient_index=patients, steps=3, arch=tiny_arch, train=tiny_train,
                       seed=0, checkpoint=ckpt)
    meta = load_checkpoint(ckpt)["metadata"]
    assert meta["release_policy"] == "site-only" and meta["step"] == 3
    with pytest.raises(TaskRefusedError, match="stylegan-local"):
        run_stylegan_local(site=_site(tmp_path, {Task.STYLEGAN_DP}), images=images, patient_index=patients, steps=1,
                           arch=tiny_arch, train=tiny_train, seed=0, checkpoint=tmp_path / "x.pt")


def test_weight_round_trip_and_local_export_refused(tiny_arch, tiny_train):
    from agent.stylegan.config import TrainingMode
    from agent.stylegan.dp_step import DPSettings
    from agent.stylegan.train import StyleGANTrainer
    from protocols.errors import BadInputError, EgressBlockedError

    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5)
    a = StyleGANTrainer(tiny_arch, tiny_train, mode=TrainingMode.FEDERATED_DP, seed=0, dp=dp)
    b = StyleGANTrainer(tiny_arch, tiny_train, mode=TrainingMode.FEDERATED_DP, seed=1, dp=dp)
    b.load_arrays(a.to_arrays())
    assert all(torch.equal(x, y) for x, y in zip(a.D.parameters(), b.D.parameters()))
    broken = a.to_arrays()
    broken.pop(next(iter(broken)))
    with pytest.raises(BadInputError, match="do not match this architecture"):
        b.load_arrays(broken)
    with pytest.raises(EgressBlockedError, match="site-only"):
        StyleGANTrainer(tiny_arch, tiny_train, mode=TrainingMode.LOCAL, seed=0).to_arrays()
