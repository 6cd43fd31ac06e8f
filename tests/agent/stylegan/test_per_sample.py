"""Exact per-sample gradients of the DP discriminator loss including R1, against a one-sample loop."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from agent.stylegan.discriminator import Discriminator
from agent.stylegan.dp_step import DPSettings, clip_and_noise_per_patient, dp_discriminator_grads, poisson_patient_batch
from agent.stylegan.per_sample import per_sample_discriminator_grads
from protocols.errors import ConfigError


def _loop_grads(D, real, fake, gamma):
    """Reference: ordinary autograd, one sample at a time, R1 by double backward."""
    out = []
    for i in range(real.shape[0]):
        x = real[i : i + 1].clone().requires_grad_(True)
        real_logit = D(x)
        (gx,) = torch.autograd.grad(real_logit.sum(), x, create_graph=True)
        loss = F.softplus(-real_logit).sum() + F.softplus(D(fake[i : i + 1])).sum() + 0.5 * gamma * gx.square().sum()
        grads = torch.autograd.grad(loss, list(D.parameters()))
        out.append({name: g for (name, _), g in zip(D.named_parameters(), grads)})
    return out


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_per_sample_grads_with_r1_match_loop(tiny_arch, gamma):
    torch.manual_seed(0)
    D = Discriminator(tiny_arch).double()
    g = torch.Generator().manual_seed(1)
    real = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    grads, losses = per_sample_discriminator_grads(D, real, fake, r1_gamma=gamma)
    reference = _loop_grads(D, real, fake, gamma)
    assert set(grads) == {n for n, _ in D.named_parameters()}
    for i, ref in enumerate(reference):
        for name, value in ref.items():
            torch.testing.assert_close(grads[name][i], value, rtol=1e-5, atol=1e-12)
    assert losses.shape == (4,)


def test_r1_changes_the_gradient(tiny_arch):
    D = Discriminator(tiny_arch).double()
    real = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    a, _ = per_sample_discriminator_grads(D, real, real, r1_gamma=0.0)
    b, _ = per_sample_discriminator_grads(D, real, real, r1_gamma=10.0)
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_per_sample_refuses_minibatch_stddev(tiny_arch):
    D = Discriminator(dataclasses.replace(tiny_arch, mbstd_group_size=2))
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="minibatch stddev"):
        per_sample_discriminator_grads(D, x, x, r1_gamma=1.0)


def test_clipping_is_per_patient_not_per_image():
    # Patient 0 has two images whose gradients cancel; per-image clipping would not cancel them.
    grads = {"w": torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 4.0]])}
    out = clip_and_noise_per_patient(grads, torch.tensor([5, 5, 9]), max_grad_norm=1.0, noise_multiplier=0.0,
                                     expected_patients=1.0, generator=torch.Generator())
    torch.testing.assert_close(out["w"], torch.tensor([0.0, 1.0]))


def test_each_patient_contributes_at_most_the_clip_norm():
    g = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(6, 3, generator=g) * 50, "b": torch.randn(6, 2, 2, generator=g) * 50}
    patients = torch.tensor([0, 0, 1, 2, 2, 2])
    for pid in range(3):
        keep = patients == pid
        single = {k: v[keep] for k, v in grads.items()}
        out = clip_and_noise_per_patient(single, patients[keep], max_grad_norm=0.7, noise_multiplier=0.0,
                                         expected_patients=1.0, generator=g)
        norm = torch.sqrt(sum(v.square().sum() for v in out.values()))
        assert norm <= 0.7 + 1e-5


def test_noise_has_the_calibrated_scale():
    zero = {"w": torch.zeros(0, 20000)}
    out = clip_and_noise_per_patient(zero, torch.zeros(0, dtype=torch.long), max_grad_norm=2.0,
                                     noise_multiplier=1.5, expected_patients=4.0,
                                     generator=torch.Generator().manual_seed(0))
    assert out["w"].std().item() == pytest.approx(1.5 * 2.0 / 4.0, rel=0.03)


def test_poisson_batch_takes_whole_patients_up_to_cap():
    patients = torch.tensor([0, 0, 0, 1, 2, 2, 3])
    idx = poisson_patient_batch(patients, sample_rate=0.5, max_images_per_patient=2,
                                generator=torch.Generator().manual_seed(3))
    drawn = patients[idx]
    for pid in drawn.unique().tolist():
        assert (drawn == pid).sum() == min(2, int((patients == pid).sum()))
    everyone = poisson_patient_batch(patients, sample_rate=1.0, max_images_per_patient=10, generator=torch.Generator())
    assert sorted(everyone.tolist()) == list(range(7))


def test_dp_step_on_empty_draw_is_pure_noise(tiny_arch):
    D = Discriminator(tiny_arch)
    settings = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1)
    empty = torch.zeros(0, 3, 16, 16)
    grads, _ = dp_discriminator_grads(D, empty, empty, torch.zeros(0, dtype=torch.long), settings, r1_gamma=1.0,
                                      n_patients=10, generator=torch.Generator().manual_seed(0))
    assert set(grads) == {n for n, _ in D.named_parameters()}
    assert all(v.abs().sum() > 0 for v in grads.values())


def test_dp_settings_are_validated():
    with pytest.raises(ConfigError, match="sample_rate"):
        DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.0)
