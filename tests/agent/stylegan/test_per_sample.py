"""Exact per-sample gradients of the DP discriminator loss including R1, against a one-sample loop."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from agent.stylegan.discriminator import Discriminator
from agent.dp.sampling import UnitBatch
from agent.stylegan.dp_step import DPSettings, unit_discriminator_grads
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


def test_unit_grads_sum_a_patients_samples(tiny_arch):
    D = Discriminator(tiny_arch).double()
    g = torch.Generator().manual_seed(2)
    real = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    batch = UnitBatch(torch.arange(3), torch.tensor([0, 1, 0]), 2)
    per_unit, _ = unit_discriminator_grads(D, real, fake, batch, r1_gamma=1.0)
    per_sample, _ = per_sample_discriminator_grads(D, real, fake, r1_gamma=1.0)
    for name, value in per_unit.items():
        assert value.shape[0] == 2
        torch.testing.assert_close(value[0], per_sample[name][0] + per_sample[name][2])
        torch.testing.assert_close(value[1], per_sample[name][1])


def test_empty_poisson_draw_gives_zero_row_grads(tiny_arch):
    D = Discriminator(tiny_arch)
    empty = torch.zeros(0, 3, 16, 16)
    none = torch.zeros(0, dtype=torch.long)
    grads, loss = unit_discriminator_grads(D, empty, empty, UnitBatch(none, none, 0), r1_gamma=1.0)
    assert set(grads) == {n for n, _ in D.named_parameters()}
    assert all(v.shape[0] == 0 for v in grads.values())


def test_dp_settings_are_validated():
    with pytest.raises(ConfigError, match="sample_rate"):
        DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.0)
    with pytest.raises(ConfigError, match="images_per_patient"):
        DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, images_per_patient=0)


def test_private_update_bounds_each_patients_influence(tiny_arch):
    from agent.stylegan.dp_step import make_private_optimizer, private_step

    torch.manual_seed(0)
    D = Discriminator(tiny_arch)
    before = [p.detach().clone() for p in D.parameters()]
    settings = DPSettings(noise_multiplier=0.0, max_grad_norm=0.01, sample_rate=0.5)
    opt = make_private_optimizer(torch.optim.SGD(D.parameters(), lr=1.0), settings, population=4)
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(4, 3, 16, 16, generator=g) * 3, torch.randn(4, 3, 16, 16, generator=g) * 3
    batch = UnitBatch(torch.arange(4), torch.tensor([0, 0, 1, 1]), 2)
    grads, _ = unit_discriminator_grads(D, real, fake, batch, r1_gamma=10.0)
    assert torch.sqrt(sum(v[0].square().sum() for v in grads.values())) > 0.01  # clipping is active
    private_step(opt, D, grads)
    step = torch.sqrt(sum((p.detach() - b).square().sum() for p, b in zip(D.parameters(), before)))
    # Two clipped patients averaged over the expected 0.5 * 4 = 2 patients: at most C.
    assert 0 < step <= 0.01 + 1e-6
