import dataclasses
import pickle

import pytest
import torch

from agent.stylegan.checkpoint import generator_arrays_for_release, load_checkpoint, save_checkpoint
from agent.stylegan.config import TrainingMode
from agent.stylegan.dp_step import DPSettings
from agent.stylegan.train import StyleGANTrainer
from protocols.errors import BadInputError, ConfigError, EgressBlockedError

DP = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, images_per_patient=2)


def _trainer(arch, train, mode, seed=0):
    return StyleGANTrainer(arch, train, mode=mode, seed=seed, dp=DP if mode is TrainingMode.FEDERATED_DP else None)


def _all_state(trainer):
    s = trainer.state()["state"]
    return {f"{part}.{k}": v for part in ("generator", "generator_ema", "discriminator") for k, v in s[part].items()}


def test_local_resume_is_bit_exact(tiny_arch, tiny_train, real_images, tmp_path):
    images, patients = real_images
    straight = _trainer(tiny_arch, tiny_train, TrainingMode.LOCAL)
    straight.fit(images, patients, steps=4)

    first = _trainer(tiny_arch, tiny_train, TrainingMode.LOCAL)
    first.fit(images, patients, steps=2, checkpoint_path=tmp_path / "ckpt.pt")
    resumed = _trainer(tiny_arch, tiny_train, TrainingMode.LOCAL, seed=99)  # everything must come from disk
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.step_count == 2
    seen = []
    resumed.fit(images, patients, steps=4, progress=lambda step, m: seen.append(step))
    assert seen == [3, 4]

    a, b = _all_state(straight), _all_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.ada.p == resumed.ada.p


def test_dp_resume_restores_state_and_continues(tiny_arch, tiny_train, real_images, tmp_path):
    images, patients = real_images
    first = _trainer(tiny_arch, tiny_train, TrainingMode.FEDERATED_DP)
    first.fit(images, patients, steps=2, checkpoint_path=tmp_path / "dp.pt")
    resumed = _trainer(tiny_arch, tiny_train, TrainingMode.FEDERATED_DP, seed=5)
    resumed.load(tmp_path / "dp.pt")
    for k, v in _all_state(first).items():
        assert torch.equal(v, _all_state(resumed)[k]), k
    metrics = resumed.fit(images, patients, steps=3)
    assert resumed.step_count == 3 and "dp_units" in metrics
    assert load_checkpoint(tmp_path / "dp.pt")["metadata"]["dp"]["unit"] == "patient"


def test_dp_noise_and_sampling_do_not_follow_the_seed(tiny_arch, tiny_train, real_images):
    images, patients = real_images
    a = _trainer(tiny_arch, tiny_train, TrainingMode.FEDERATED_DP, seed=3)
    b = _trainer(tiny_arch, tiny_train, TrainingMode.FEDERATED_DP, seed=3)
    assert torch.equal(a.D.out.weight, b.D.out.weight)  # same seed: same initial weights
    a.fit(images, patients, steps=1)
    b.fit(images, patients, steps=1)
    assert not torch.equal(a.D.out.weight, b.D.out.weight)  # secret noise differs


def test_local_training_moves_weights_and_adapts_augmentation(tiny_arch, tiny_train, real_images):
    images, patients = real_images
    trainer = _trainer(tiny_arch, tiny_train, TrainingMode.LOCAL)
    before = {k: v.clone() for k, v in _all_state(trainer).items()}
    metrics = trainer.fit(images, patients, steps=3)
    assert {"d_loss", "g_loss", "augment_p", "seconds"} <= metrics.keys()
    after = _all_state(trainer)
    assert not torch.equal(before["generator.synthesis.const"], after["generator.synthesis.const"])
    assert not torch.equal(before["discriminator.out.weight"], after["discriminator.out.weight"])
    assert trainer.ada.p != tiny_train.augment_p  # moved by 4 images / 100 per step


def test_dp_mode_keeps_augmentation_fixed(tiny_arch, tiny_train, real_images):
    images, patients = real_images
    trainer = _trainer(tiny_arch, tiny_train, TrainingMode.FEDERATED_DP)
    metrics = trainer.fit(images, patients, steps=2)
    assert trainer.ada.p == tiny_train.augment_p
    assert "dp_units" in metrics


def test_dp_mode_requires_settings_and_no_mbstd(tiny_arch, tiny_train):
    with pytest.raises(ConfigError, match="DP settings are required"):
        StyleGANTrainer(tiny_arch, tiny_train, mode=TrainingMode.FEDERATED_DP, seed=0)
    with pytest.raises(ConfigError, match="mbstd_group_size must be 0"):
        StyleGANTrainer(dataclasses.replace(tiny_arch, mbstd_group_size=2), tiny_train,
                        mode=TrainingMode.FEDERATED_DP, seed=0, dp=DP)


def test_release_marker_blocks_local_weights(tiny_arch, tiny_train, tmp_path):
    local = _trainer(tiny_arch, tiny_train, TrainingMode.LOCAL)
    local.save(tmp_path / "local.pt")
    payload = load_checkpoint(tmp_path / "local.pt")
    assert payload["metadata"]["release_policy"] == "site-only"
    with pytest.raises(EgressBlockedError, match="site-only"):
        generator_arrays_for_release(payload)

    dp = _trainer(tiny_arch, tiny_train, TrainingMode.FEDERATED_DP)
    dp.save(tmp_path / "dp.pt")
    arrays = generator_arrays_for_release(load_checkpoint(tmp_path / "dp.pt"))
    assert arrays and all(k.startswith("generator.") for k in arrays)


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "anonfed-stylegan-checkpoint/1", "x": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(BadInputError, match="only tensors and plain values"):
        load_checkpoint(path)


def test_foreign_file_is_refused(tmp_path):
    save_path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, save_path)
    with pytest.raises(BadInputError, match="expected format"):
        load_checkpoint(save_path)


def test_resume_refuses_other_mode_or_architecture(tiny_arch, tiny_train, tmp_path):
    _trainer(tiny_arch, tiny_train, TrainingMode.LOCAL).save(tmp_path / "c.pt")
    with pytest.raises(BadInputError, match="modes cannot be mixed"):
        _trainer(tiny_arch, tiny_train, TrainingMode.FEDERATED_DP).load(tmp_path / "c.pt")
    with pytest.raises(BadInputError, match="arch differs"):
        _trainer(dataclasses.replace(tiny_arch, w_dim=8), tiny_train, TrainingMode.LOCAL).load(tmp_path / "c.pt")


def test_step_checks_image_shape(tiny_arch, tiny_train):
    with pytest.raises(BadInputError, match="expected real images"):
        _trainer(tiny_arch, tiny_train, TrainingMode.LOCAL).step(torch.zeros(2, 3, 32, 32))


def test_dp_generator_step_and_ema_do_not_depend_on_the_poisson_batch_size(tiny_arch, tiny_train, real_images,
                                                                           monkeypatch):
    # The generator step and the EMA are released un-noised: their batch, the EMA's beta and the
    # seeded latent stream must be the same whatever the private draw held.
    from agent.dp.sampling import UnitBatch
    from agent.stylegan import train as train_module

    images, patients = real_images
    betas: list[float] = []
    real_beta = train_module.ema_beta
    monkeypatch.setattr(train_module, "ema_beta", lambda **kw: betas.append(kw["batch_size"]) or real_beta(**kw))
    seen = []
    for drawn in ([0, 1], [0, 1, 2, 3, 4]):  # patient 0 alone vs patients 0-2
        trainer = _trainer(tiny_arch, tiny_train, TrainingMode.FEDERATED_DP, seed=3)
        g_batches = []
        real_fakes = trainer._fakes
        trainer._fakes = lambda batch, *, grad, f=real_fakes, out=g_batches, **kw: (
            out.append(batch) if grad else None) or f(batch, grad=grad, **kw)
        idx = torch.tensor(drawn)
        trainer.step(images[idx], UnitBatch(idx, patients[idx], int(patients[idx].max()) + 1), population=6)
        seen.append((g_batches, trainer.rng.get_state()))
    assert seen[0][0] == seen[1][0] == [tiny_train.batch_size]
    assert torch.equal(seen[0][1], seen[1][1])
    assert betas == [tiny_train.batch_size] * 2
